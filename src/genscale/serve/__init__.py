"""`genscale serve`: models that passed their gate, behind an HTTP service (serve/app.py) with a web page.

Which models: the ones named (registry names, NAME@ALIAS, NAME/VERSION, or run folders/ids), else every registered
model at its @champion alias (its latest version without one). Bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import os

from genscale.errors import GenscaleError
from genscale.serve.app import Limits, create_app
from genscale.serve.models import ServedModel, find_model, load_model
from genscale.ui import console, warning

TOKEN_ENV = "GENSCALE_TOKEN"  # when set, requests need `Authorization: Bearer <token>`
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def served_models(specs: list[str], *, device: str | None = None) -> list[ServedModel]:
    """Load each model of `specs` (check_models) once (no unpickling: safetensors checkpoints); two specs with one
    served name are an error."""
    out: dict[str, ServedModel] = {}
    for spec in specs:
        name, info, sampler = load_model(spec, device=device)
        if name in out:
            raise GenscaleError(f"serve: two models named '{name}' ({spec} and an earlier one)")
        out[name] = ServedModel(name, info, sampler)
        console.print(f"loaded {name}: {info['family']} run {info['run_id']} step {info['step']}"
                      + (f", gate {info['gate']['verdict']}" if info.get("gate") else ""), highlight=False)
    return list(out.values())


def check_models(specs: list[str]) -> list[str]:
    """The specs to serve (none named: every registered model); fails before the server starts when there are none
    or a named one does not exist (loading itself happens after start-up)."""
    from genscale import registry

    if not specs:
        specs = [v.name for v in registry.registered_models()]
        if not specs:
            raise GenscaleError("serve: no registered models; register one (genscale models register RUN --name "
                                "NAME) or name a run to serve (genscale serve RUN)")
    for spec in specs:
        find_model(spec)
    return specs


def serve(specs: list[str], *, host: str = "127.0.0.1", port: int = 8000, device: str | None = None,
          limits: Limits = Limits(), max_batch: int = 16) -> None:
    """Run the service until interrupted."""
    import uvicorn

    token = os.environ.get(TOKEN_ENV) or None
    specs = check_models(specs)
    if host not in LOOPBACK and token is None:
        warning(f"serving on {host} without a token: anyone who can reach it can use it (set {TOKEN_ENV})")
    app = create_app(lambda: served_models(specs, device=device), limits=limits, token=token, max_batch=max_batch)
    console.print(f"serving at http://{host}:{port}  (web page /, API docs /docs, readiness /ready)", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
