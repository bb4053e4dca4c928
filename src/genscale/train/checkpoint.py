"""Checkpoints: safetensors for every tensor plus a JSON sidecar, written atomically, verified when read.

Layout of a run folder:
    checkpoints/step_000500.safetensors   module weights, optimizer tensors, RNG states
    checkpoints/step_000500.json          step, sha256 of the tensor file, resolved config, optimizer
                                          hyper-parameters, counters; written after the tensor file
    checkpoints/latest.json               {"step": 500}: written last, for people and other tools
Nothing is unpickled on load: safetensors holds raw tensors and JSON holds the rest.

The files are the truth, not the pointer: a checkpoint is *intact* when both files are there, the tensor file
parses and matches the sha256 its sidecar recorded, the sidecar names the same step, and every floating-point
tensor is finite. Loading takes the newest intact checkpoint and says which newer ones it passed over and why
(a kill mid-write, a truncated copy, a disk that filled up); a missing or damaged `latest.json` changes nothing.
A checkpoint with non-finite values is never written, so a diverged run keeps its last good state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from genscale.errors import GenscaleError
from genscale.paths import atomic_write_bytes
from genscale.ui import warning

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


class NonFiniteCheckpointError(GenscaleError):
    """A checkpoint was refused because some of its floating-point tensors hold NaN or infinity."""


@dataclass(frozen=True)
class Checkpoint:
    """One intact checkpoint as read back: its step, every tensor, the sidecar, and the newer ones passed over."""

    step: int
    tensors: dict[str, torch.Tensor]
    sidecar: dict[str, Any]
    passed_over: tuple[str, ...] = ()  # "step 12: <why it is not intact>", newest first


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _stem(folder: Path, step: int) -> Path:
    return folder / f"step_{step:07d}"


def checkpoint_steps(folder: Path) -> list[int]:
    """Steps that have a tensor file in `folder`, newest first (intact or not)."""
    steps = []
    for p in folder.glob("step_*.safetensors") if folder.is_dir() else ():
        try:
            steps.append(int(p.stem.removeprefix("step_")))
        except ValueError:
            continue  # not one of ours
    return sorted(steps, reverse=True)


def save_checkpoint(folder: Path, step: int, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> Path:
    """Write step_<step>.{safetensors,json}, then point latest.json at them; keep the newest KEEP_LAST up to this
    step. Refuses (NonFiniteCheckpointError, nothing written) if a floating-point tensor is not finite."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}  # serialised at once: no copy needed
    bad = non_finite(cpu)
    if bad:
        raise NonFiniteCheckpointError(f"step {step}: {len(bad)} tensor(s) hold NaN or infinity (first: {bad[0]}); "
                                       "checkpoint not written")
    folder.mkdir(parents=True, exist_ok=True)
    stem = _stem(folder, step)
    data = save_safetensors(cpu)
    atomic_write_bytes(stem.with_suffix(".safetensors"), data)
    atomic_write_bytes(stem.with_suffix(".json"), json.dumps(
        {"step": step, "sha256": hashlib.sha256(data).hexdigest(), **sidecar}, indent=1).encode())
    atomic_write_bytes(folder / "latest.json", json.dumps({"step": step}).encode())
    # older than this step only: a newer file left by a run that fell back past it is overwritten when reached
    for old in [s for s in checkpoint_steps(folder) if s < step][KEEP_LAST - 1:]:
        _stem(folder, old).with_suffix(".safetensors").unlink(missing_ok=True)
        _stem(folder, old).with_suffix(".json").unlink(missing_ok=True)
    return stem.with_suffix(".safetensors")


def remove_partial_writes(folder: Path) -> None:
    """Delete the temporary files of writes a kill interrupted (atomic_write_bytes' `.NAME.tmp-PID`); call it only
    while holding the run (tracking.run_lock), when no other writer can be midway."""
    for tmp in folder.glob(".*.tmp-*") if folder.is_dir() else ():
        tmp.unlink(missing_ok=True)


def latest_step(folder: Path) -> int | None:
    """The newest step with a tensor file (not verified: `load_checkpoint` verifies), or None."""
    steps = checkpoint_steps(folder)
    return steps[0] if steps else None


def read_checkpoint(folder: Path, step: int) -> Checkpoint:
    """Checkpoint `step`, verified; a GenscaleError saying what is wrong if it is not intact."""
    stem = _stem(folder, step)
    try:
        data = stem.with_suffix(".safetensors").read_bytes()
        sidecar = json.loads(stem.with_suffix(".json").read_text())
    except FileNotFoundError as e:
        raise GenscaleError(f"{Path(e.filename).name} is missing") from None
    except OSError as e:
        raise GenscaleError(f"cannot read it ({e.strerror})") from None
    except ValueError:
        raise GenscaleError(f"{stem.name}.json is not valid JSON") from None
    if not data:
        raise GenscaleError(f"{stem.name}.safetensors is empty")
    if not isinstance(sidecar, dict) or sidecar.get("step") != step:
        raise GenscaleError(f"{stem.name}.json does not describe step {step}")
    if "sha256" in sidecar and hashlib.sha256(data).hexdigest() != sidecar["sha256"]:
        raise GenscaleError(f"{stem.name}.safetensors does not match the sha256 its sidecar recorded "
                            f"({len(data):,} bytes; truncated or changed)")
    try:
        tensors = load_safetensors(data)
    except Exception as e:  # noqa: BLE001  safetensors raises its own error type for every malformed file
        raise GenscaleError(f"{stem.name}.safetensors cannot be read ({str(e).splitlines()[0]})") from None
    bad = non_finite(tensors)
    if bad:
        raise GenscaleError(f"{len(bad)} tensor(s) hold NaN or infinity (first: {bad[0]})")
    return Checkpoint(step, tensors, sidecar)


def load_checkpoint(folder: Path, step: int | None = None, *, quiet: bool = False) -> Checkpoint:
    """Checkpoint `step`, or the newest intact one; a GenscaleError naming every checkpoint tried when none is.

    Passing over a newer, damaged checkpoint is said on the console, with the reason (unless `quiet`: a
    data-parallel rank other than 0, which reads the same files)."""
    steps = [step] if step is not None else checkpoint_steps(folder)
    if not steps:
        raise GenscaleError(f"{folder}: no checkpoint found")
    passed_over: list[str] = []
    for s in steps:
        try:
            ckpt = read_checkpoint(folder, s)
        except GenscaleError as e:
            passed_over.append(f"step {s}: {e}")
            continue
        if passed_over and not quiet:
            warning(f"{folder}: using checkpoint step {ckpt.step}; passed over " + "; ".join(passed_over))
        return dataclasses.replace(ckpt, passed_over=tuple(passed_over))
    raise GenscaleError(f"{folder}: no intact checkpoint ({'; '.join(passed_over)})")


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """module.load_state_dict(state), with a mismatch (another network size or kind) as a GenscaleError."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e).splitlines()[0])
        raise GenscaleError(f"{where}: the checkpoint does not fit the network of the run's config ({detail}); "
                            "was config.yaml edited?") from None


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
