"""Shared training machinery: device choice, precision, seeding, EMA, FLOP counting, progress."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from rich.progress import (
    TextColumn,
)
from torch.optim.swa_utils import AveragedModel
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

from genscale.errors import GenscaleError
from genscale.ui import progress


def select_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu. Asking for a device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenscaleError("train.device: 'cuda' requested but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GenscaleError("train.device: 'mps' requested but MPS is not available")
    return torch.device(name)


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA (precision auto or bf16); plain fp32 elsewhere."""
    if precision == "bf16" and device.type != "cuda":
        raise GenscaleError(f"train.precision: bf16 autocast needs CUDA, the device is {device.type}")
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (initialisation); the loop's own generators are seeded separately."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def ema_decay_at(decay: float, updates: int | torch.Tensor) -> float | torch.Tensor:
    """Decay of the EMA's average after `updates` earlier ones: min(decay, (1 + n) / (10 + n)), the warm-up of
    TensorFlow's ExponentialMovingAverage(num_updates=...) and of timm's ModelEmaV2.

    Without it an EMA of decay 0.999 still holds 0.999^600 = 55% of the initial weights after 600 updates; with
    it the early averages follow the model closely (n = 1: 0.18, n = 80: 0.9, n = 890: 0.99) and `decay` itself
    rules from n = (10 decay - 1) / (1 - decay) on (8,990 for 0.999), so the EMA means something at any run
    length. `updates` may be a tensor (the EMA's own counter: no device sync).
    """
    if isinstance(updates, torch.Tensor):
        n = updates.to(torch.float64)
        return torch.clamp((1 + n) / (10 + n), max=decay)
    return min(decay, (1 + updates) / (10 + updates))


def make_ema(module: torch.nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of weights and buffers (torch.optim.swa_utils) with the `ema_decay_at` warm-up.

    AveragedModel copies the module at its first update and counts updates in its `n_averaged` buffer, which is
    checkpointed, so a resumed run continues the same schedule. Integer buffers (BatchNorm's batch counter) are
    copied, not averaged."""

    @torch.no_grad()
    def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # one dtype per call: AveragedModel groups tensors by dtype
            torch._foreach_copy_(averaged, current)
            return
        weight = (1 - ema_decay_at(decay, n_averaged)).to(averaged[0].dtype)  # on the device: no sync per step
        torch._foreach_lerp_(averaged, current, weight)  # averaged <- decay_t averaged + (1 - decay_t) current

    return AveragedModel(module, multi_avg_fn=ema_update, use_buffers=True)


# torch's counter knows the CUDA attention kernels; the CPU one gets the same formulas (which, like the usual
# 6N + 12 L T d estimate, count the full T x T score matrix even when attention is causal)
_CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flop.__wrapped__,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_backward_flop.__wrapped__,
}


def count_flops(fn: Callable[[], object]) -> tuple[object, int]:
    """Run `fn` once under torch.utils.flop_counter and return (its result, FLOPs counted)."""
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FLOPS)
    with counter:
        result = fn()
    return result, counter.get_total_flops()


class BatchStream:
    """Batches of a tensor held on the device, in a seeded order that is a pure function of the index.

    Batch i comes from epoch i // batches_per_epoch, whose permutation is drawn from seed + epoch; so a
    resumed run continues with exactly the batches an uninterrupted one would see. The last partial
    batch of an epoch is dropped.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int):
        if batch_size > len(data):
            raise GenscaleError(f"train.batch_size: {batch_size} exceeds the {len(data)} training examples")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.per_epoch = len(data) // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def batch(self, i: int) -> torch.Tensor:
        epoch, j = divmod(i, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._perm = epoch, torch.randperm(len(self.data), generator=g).to(self.data.device)
        return self.data[self._perm[j * self.batch_size:(j + 1) * self.batch_size]]

    def epochs(self, batches: int) -> float:
        return batches * self.batch_size / len(self.data)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


@contextlib.contextmanager
def progress_bar(total: int, completed: int, description: str) -> Iterator[Callable[..., None]]:
    """A rich progress bar with ETA and the latest losses; yields update(advance, **losses)."""
    with progress(TextColumn("{task.fields[info]}")) as bar:
        task = bar.add_task(description, total=total, completed=completed, info="")

        def update(advance: int = 1, **values: float) -> None:
            info = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            bar.update(task, advance=advance, **({"info": info} if info else {}))

        yield update
