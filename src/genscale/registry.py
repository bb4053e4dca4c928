"""The model registry: runs that passed their quality gate, as numbered versions of named models.

It is MLflow's model registry in the store the runs are tracked in (tracking.py). `genscale models register RUN
--name NAME` (or `gate.register: NAME` in a run config) adds the next version of NAME; an alias (`champion`) names
the version to serve; `genscale serve` loads a version's sampler from its run folder. What a version is — family,
data version, metrics and their extractor, the gate's verdict and reasons, the resolved config — is kept in the
version's own tags, so the registry answers it without the run's files (only a config too long for a tag is read
from the run folder).

The version's MLflow `source` is `runs:/<run id>/export-<format>/step_<step>`: the run's export (export.py: a
transformers GPT-2 folder for gpt runs, a torch.export program for image runs), logged to the run's artifacts when it
is first registered at that step, so a version carries the model, not the training checkpoint with its optimizer
state. Every MLflow server accepts that source (a tracking server refuses a local path outside the run's artifacts, so
the run folder's file: URI would only work on a local store); the run folder itself is the `run_dir` tag, which
`genscale serve` loads the sampler from.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genscale.errors import GenscaleError
from genscale.paths import read_json
from genscale.tracking import _store_lock, open_client, tracking_uri
from genscale.ui import console

if TYPE_CHECKING:
    from genscale.config import RunConfig

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # no '/', never '.' or '..': safe in URLs and paths
MODEL_NAME_RULE = "a model name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")  # inside MLflow's own rule ([\w-]+, 'latest' and v1 reserved)
ALIAS_RULE = ("an alias is 1 to 64 letters, digits, '_' or '-', starting with a letter ('latest' and v<number> are "
              "reserved by MLflow)")
CHAMPION = "champion"  # the alias `NAME` alone resolves to; without it, NAME is its latest version
SPEC_FORMS = "NAME, NAME@ALIAS or NAME/VERSION"
# A model-version tag value held 5000 characters until MLflow 3.2 migrated the column to TEXT; staying under it keeps
# a version registrable on an older tracking server too.
TAG_VALUE_LIMIT = 5000


class NotRegistered(GenscaleError):
    """No registered model has the name asked for (`genscale serve` then looks for a run of that name)."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as the registry's tags describe it."""

    name: str
    version: int
    aliases: tuple[str, ...]
    run_id: str  # the MLflow run it was registered from
    run_dir: Path  # the run folder the sampler is loaded from (pipeline.load_sampler)
    step: int  # the checkpoint step it was registered at (the run's newest then)
    family: str  # model.family of the run
    kind: str  # "image" or "text": what the family generates
    dataset: str | None  # the data it was trained on, as summary.json names it
    dataset_version: str | None  # that data's content version (a hash)
    metrics: dict[str, dict]  # metric -> {"value": float, "extractor": str | None}
    gate: dict  # {"verdict": "PASS", "reasons": [...]}
    config: str | None  # the run's resolved config.yaml; None if too long for a tag and its run folder lost it
    source: str  # MLflow's source of the version: runs:/<run id>/export-<format>/step_<step>
    created: str  # ISO 8601, UTC

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: run_dir as a string, aliases as a list."""
        return {**asdict(self), "run_dir": str(self.run_dir), "aliases": list(self.aliases)}


def check_model_name(name: str, what: str = "--name") -> str:
    """`name` if it is a valid registered-model name, else a GenscaleError naming `what`, the value and the rule."""
    if not MODEL_NAME.fullmatch(name):
        raise GenscaleError(f"{what} {name!r}: {MODEL_NAME_RULE}")
    return name


def check_alias(alias: str, what: str = "--alias") -> str:
    """`alias` if MLflow takes it as an alias, else a GenscaleError naming `what`, the value and the rule."""
    if not ALIAS.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise GenscaleError(f"{what} {alias!r}: {ALIAS_RULE}")
    return alias


def register(run: str, name: str, *, alias: str | None = None, uri: str | None = None) -> ModelVersion:
    """Register run `run` (folder, id, unique prefix or 'latest') as the next version of model `name`, and point
    `alias` at it. `uri`: the tracking store; None: yours ($MLFLOW_TRACKING_URI, else <runs>/mlflow.db), as `eval`
    uses: a run folder's own config never chooses the store."""
    from genscale.pipeline import load_run

    check_model_name(name)
    if alias is not None:
        check_alias(alias)
    run_dir, cfg = load_run(run)
    return register_run(run_dir, cfg, name, alias=alias, uri=uri, shown=run)


def register_run(run_dir: Path, cfg: RunConfig, name: str, *, alias: str | None = None, uri: str | None = None,
                 shown: str | None = None) -> ModelVersion:
    """Register the run in `run_dir` (config `cfg`); `shown` names it in messages (default: its folder's name).

    Refused, with a GenscaleError each: a bad name or alias, a run not evaluated (no gate.json), one whose gate
    failed, one without a checkpoint, one the store does not hold (or that logged no final checkpoint to it), a run
    of another kind than the model's earlier versions (images vs text)."""
    from genscale.export import registry_export
    from genscale.families import FAMILIES
    from genscale.pipeline import tracked_run_id
    from genscale.train.checkpoint import latest_step

    shown = shown or run_dir.name
    check_model_name(name)
    if alias is not None:
        check_alias(alias)
    gate = _read_gate(run_dir, shown)
    if gate["verdict"] != "PASS":
        raise GenscaleError(f"run {shown} failed its gate, not registered: {'; '.join(gate['reasons'])}")
    step = latest_step(run_dir / "checkpoints")
    if step is None:
        raise GenscaleError(f"run {shown} has no checkpoint in {run_dir / 'checkpoints'}")
    summary = read_json(run_dir / "summary.json", "run summary") if (run_dir / "summary.json").exists() else {}
    kind = FAMILIES[cfg.model.family].data_kind
    run_id, uri = tracked_run_id(run_dir), tracking_uri(uri)
    client = open_client(uri)
    _check_tracked(client, run_id, shown, uri)
    if not cfg.gate.thresholds:
        console.print(f"note: run {shown}'s gate has no thresholds: it passes vacuously", highlight=False)
    config = (run_dir / "config.yaml").read_text(encoding="utf-8")
    tags = {"family": cfg.model.family, "kind": kind, "run_dir": str(run_dir), "step": str(step),
            "gate": gate["verdict"], "gate.reasons": json.dumps(gate["reasons"]),
            **({"config": config} if len(config) <= TAG_VALUE_LIMIT else {"config.path": str(run_dir / "config.yaml")}),
            **{k: str(summary[k]) for k in ("dataset", "dataset_version") if summary.get(k) is not None}}
    for metric, record in metric_records(run_dir).items():
        tags[f"metric.{metric}"] = repr(float(record["value"]))
        if record.get("extractor") is not None:
            tags[f"metric.{metric}.extractor"] = str(record["extractor"])
    from mlflow.exceptions import MlflowException

    with _store_lock(uri):  # get-or-create: two runs registering a new name at once must not both create it
        try:
            model = client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            model = client.create_registered_model(
                name, tags={"kind": kind}, description=f"genscale {kind} model: each version is a run that passed "
                "its quality gate (tags: family, dataset_version, metric.*, gate, config, run_dir)")
        if model.tags.get("kind", kind) != kind:
            raise GenscaleError(f"model {name} holds {model.tags['kind']} models; run {shown} is a "
                                f"{cfg.model.family} run, of kind {kind}: register it under another name")
        source = registry_export(client, run_id, run_dir, cfg, step)
        created = client.create_model_version(name, source=source, run_id=run_id, tags=tags)  # one call, every tag
        if alias is not None:
            client.set_registered_model_alias(name, alias, str(created.version))
    return _model_version(created, (alias,) if alias else ())


def model_versions(name: str, *, uri: str | None = None) -> list[ModelVersion]:
    """Every version of model `name`, oldest first; an unknown name is a GenscaleError listing the registered ones."""
    client = open_client(tracking_uri(uri))
    model = _registered(client, check_model_name(name, "model"), uri)
    found = client.search_model_versions(f"name = '{name}'")  # the name is checked: no quote can be in it
    return sorted((_model_version(v, _aliases_of(model, int(v.version))) for v in found), key=lambda v: v.version)


def registered_models(*, uri: str | None = None) -> list[ModelVersion]:
    """For each registered model name: its `champion` version if it has one, else its latest; sorted by name."""
    client = open_client(tracking_uri(uri))
    shown = []
    for model in _all_models(client):
        version = _default_version(model)
        if version is not None:
            shown.append(_model_version(client.get_model_version(model.name, str(version)),
                                        _aliases_of(model, version)))
    return sorted(shown, key=lambda v: v.name)


def resolve(spec: str, *, uri: str | None = None) -> ModelVersion:
    """The version `spec` names: NAME (its champion, else its latest version), NAME@ALIAS or NAME/VERSION."""
    name, sep, rest = re.fullmatch(r"([^@/]*)([@/]?)(.*)", spec, re.DOTALL).groups()
    check_model_name(name, f"model {spec!r}: name")
    client = open_client(tracking_uri(uri))
    model = _registered(client, name, uri)
    if sep == "@":
        check_alias(rest, f"model {spec!r}: alias")
        versions = {a: int(v) for a, v in (model.aliases or {}).items()}
        if rest not in versions:
            have = ", ".join(f"{a} -> version {v}" for a, v in sorted(versions.items())) or "none"
            raise GenscaleError(f"model {name} has no alias {rest!r} (its aliases: {have})")
        version = versions[rest]
    elif sep == "/":
        if not (rest.isascii() and rest.isdigit()) or int(rest) < 1:
            raise GenscaleError(f"model {spec!r}: {rest!r} is not a version number (give {SPEC_FORMS})")
        version = int(rest)
    else:
        version = _default_version(model)
        if version is None:
            raise GenscaleError(f"model {name} has no versions")
    return _version_of(client, model, version)


def promote(name: str, version: int, alias: str = CHAMPION, *, uri: str | None = None) -> ModelVersion:
    """Point `alias` of model `name` at `version`, moving it from the version it named before."""
    check_model_name(name, "model")
    check_alias(alias)
    client = open_client(tracking_uri(uri))
    model = _registered(client, name, uri)
    target = _version_of(client, model, version)  # says which versions there are when this one is not
    client.set_registered_model_alias(name, alias, str(version))
    before = (model.aliases or {}).get(alias)
    if before is not None and int(before) != version:
        console.print(f"{name}@{alias} moved from version {before} to version {version}", highlight=False)
    return replace(target, aliases=tuple(sorted({*target.aliases, alias})))


def _version_of(client: Any, model: Any, version: int) -> ModelVersion:
    """Version `version` of the RegisteredModel `model`; a GenscaleError listing its versions if it has no such."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_model_version(model.name, str(version))
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        have = sorted(int(v.version) for v in client.search_model_versions(f"name = '{model.name}'"))
        raise GenscaleError(f"model {model.name} has no version {version} (its versions: "
                            f"{', '.join(map(str, have)) or 'none'})") from None
    return _model_version(found, _aliases_of(model, version))


def _read_gate(run_dir: Path, shown: str) -> dict:
    path = run_dir / "gate.json"
    if not path.exists():
        raise GenscaleError(f"run {shown} has not been evaluated: genscale eval {shown}")
    gate = read_json(path, "gate verdict")
    if not isinstance(gate, dict) or gate.get("verdict") not in ("PASS", "FAIL") or \
            not isinstance(gate.get("reasons"), list):
        raise GenscaleError(f"{path}: gate verdict is not {{\"verdict\": \"PASS\"|\"FAIL\", \"reasons\": [...]}}; "
                            f"genscale eval {shown} writes it again")
    return {"verdict": gate["verdict"], "reasons": [str(r) for r in gate["reasons"]]}


def metric_records(run_dir: Path) -> dict[str, dict]:
    """The metrics of metrics.json (records of generated vs reference data, not facts such as the sampling time)."""
    path = run_dir / "metrics.json"
    stored = read_json(path, "metrics file")
    if not isinstance(stored, dict):
        raise GenscaleError(f"{path}: metrics file is not a JSON object")
    return {k: r for k, r in sorted(stored.items()) if isinstance(r, dict) and "n_gen" in r and "value" in r}


def _check_tracked(client: Any, run_id: str, shown: str, uri: str) -> None:
    """The store holds the run, and the final checkpoint it logged (its training finished)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise GenscaleError(f"run {shown} (MLflow run {run_id}) is not in the tracking store {uri} (set "
                            "MLFLOW_TRACKING_URI to the store that holds it)") from None
    if not client.list_artifacts(run_id, "checkpoint"):
        raise GenscaleError(f"run {shown} logged no final checkpoint to the tracking store (runs:/{run_id}/"
                            "checkpoint): its training "
                            f"did not finish; genscale train --resume {shown}")


def _registered(client: Any, name: str, uri: str | None) -> Any:
    """MLflow's RegisteredModel `name`; an unknown name is a GenscaleError listing the registered ones."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    names = sorted(m.name for m in _all_models(client))
    have = f"registered: {', '.join(names[:20])}{', ...' if len(names) > 20 else ''}" if names else \
        "none is registered; genscale models register RUN --name NAME"
    raise NotRegistered(f"no registered model {name!r} in {tracking_uri(uri)} ({have})")


def _all_models(client: Any) -> list[Any]:
    models, token = [], None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        models += list(page)
        token = page.token
        if not token:
            return models


def _default_version(model: Any) -> int | None:
    """The champion version, else the latest (MLflow's latest per stage: the highest of them)."""
    aliases = model.aliases or {}
    if CHAMPION in aliases:
        return int(aliases[CHAMPION])
    return max((int(v.version) for v in model.latest_versions or []), default=None)


def _aliases_of(model: Any, version: int) -> tuple[str, ...]:
    return tuple(sorted(a for a, v in (model.aliases or {}).items() if int(v) == version))


def _model_version(v: Any, aliases: tuple[str, ...]) -> ModelVersion:
    """A ModelVersion from MLflow's, read from its tags."""
    t = v.tags or {}
    metrics = {key.removeprefix("metric."): {"value": float(value), "extractor": t.get(f"{key}.extractor")}
               for key, value in sorted(t.items()) if key.startswith("metric.") and not key.endswith(".extractor")}
    config = t.get("config")
    if config is None and "config.path" in t:  # longer than a tag holds: the run folder's copy
        try:
            config = Path(t["config.path"]).read_text(encoding="utf-8")
        except OSError:
            config = None
    created = datetime.fromtimestamp(v.creation_timestamp / 1000, tz=timezone.utc).isoformat(timespec="seconds")
    return ModelVersion(name=v.name, version=int(v.version), aliases=aliases, run_id=v.run_id or "",
                        run_dir=Path(t.get("run_dir", "")), step=int(t.get("step", 0)), family=t.get("family", ""),
                        kind=t.get("kind", ""), dataset=t.get("dataset"), dataset_version=t.get("dataset_version"),
                        metrics=metrics, gate={"verdict": t.get("gate", ""),
                                               "reasons": json.loads(t.get("gate.reasons", "[]"))},
                        config=config, source=v.source or "", created=created)
