"""Checkpoints: safetensors for every tensor plus a JSON sidecar, written atomically.

Layout of a run folder:
    checkpoints/step_000500.safetensors   module weights, optimizer tensors, RNG states
    checkpoints/step_000500.json          step, resolved config, optimizer hyper-parameters, counters
    checkpoints/latest.json               {"step": 500}: written last, so it only ever names a complete pair
Nothing is unpickled on load: safetensors holds raw tensors and JSON holds the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from genscale.errors import GenscaleError
from genscale.paths import atomic_write_bytes

KEEP_LAST = 2


def optimizer_to_flat(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-able values."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.state.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor],
                        meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + ".state."):
            pid, key = name[len(prefix) + 7:].split(".", 1)
            state.setdefault(int(pid), {})[key] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: Path, step: int, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> Path:
    """Write step_<step>.{safetensors,json}, then point latest.json at them; keep the last KEEP_LAST."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"step_{step:07d}"
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}  # serialised at once: no copy needed
    atomic_write_bytes(stem.with_suffix(".safetensors"), save_safetensors(cpu))
    atomic_write_bytes(stem.with_suffix(".json"), json.dumps({"step": step, **sidecar}, indent=1).encode())
    atomic_write_bytes(folder / "latest.json", json.dumps({"step": step}).encode())
    for old in sorted(folder.glob("step_*.safetensors"))[:-KEEP_LAST]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return stem.with_suffix(".safetensors")


def latest_step(folder: Path) -> int | None:
    pointer = folder / "latest.json"
    if not pointer.exists():
        return None
    try:
        return int(json.loads(pointer.read_text())["step"])
    except (ValueError, KeyError, TypeError):
        raise GenscaleError(f"{pointer}: damaged checkpoint pointer") from None


def load_checkpoint(folder: Path, step: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, sidecar) of `step`, or of the latest checkpoint."""
    step = latest_step(folder) if step is None else step
    if step is None:
        raise GenscaleError(f"{folder}: no checkpoint found")
    stem = folder / f"step_{step:07d}"
    try:
        tensors = load_safetensors(stem.with_suffix(".safetensors").read_bytes())
        sidecar = json.loads(stem.with_suffix(".json").read_text())
    except (OSError, ValueError) as e:
        raise GenscaleError(f"{stem}.safetensors: cannot load checkpoint ({e})") from None
    return tensors, sidecar


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
