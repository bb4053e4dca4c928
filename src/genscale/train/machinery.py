"""Shared training machinery: device choice, precision, seeding, EMA, FLOP counting, progress."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from rich.progress import TextColumn
from torch.optim.swa_utils import AveragedModel
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

from genscale.errors import GenscaleError
from genscale.train.distributed import SINGLE, World
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
    """bf16 autocast on CUDA (precision auto or bf16), with TF32 for what stays in fp32; plain fp32 elsewhere and
    with precision fp32 (TF32 off: the strict reference)."""
    if precision == "bf16" and device.type != "cuda":
        raise GenscaleError(f"train.precision: bf16 autocast needs CUDA, the device is {device.type}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
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
    """Batches of `data` on `device`, in a seeded order that is a pure function of the index.

    Batch i comes from epoch i // batches_per_epoch, whose permutation is drawn from seed + epoch; so a
    resumed run continues with exactly the batches an uninterrupted one would see. The last partial
    batch of an epoch is dropped. In a data-parallel world each rank gathers only its own rows of every
    global batch (`batch_size` is the global batch).

    A tensor is moved to the device once. Anything else indexable by a CPU index tensor (data/datasets.py
    ShardedImages: a split too large for memory) is read batch by batch, and each batch copied (pinned on CUDA):
    the process then holds one batch of it, plus its index and permutation (16 bytes per example).
    """

    def __init__(self, data: Any, batch_size: int, seed: int, world: World = SINGLE,
                 device: torch.device | None = None):
        if batch_size > len(data):
            raise GenscaleError(f"train.batch_size: {batch_size} exceeds the {len(data)} training examples")
        world.share(batch_size, "train.batch_size")
        self.streamed = not isinstance(data, torch.Tensor)
        self.device = device or (torch.device("cpu") if self.streamed else data.device)
        data = data if self.streamed else data.to(self.device)
        self.data, self.batch_size, self.seed, self.world = data, batch_size, seed, world
        self.per_epoch = len(data) // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def batch(self, i: int) -> torch.Tensor:
        epoch, j = divmod(i, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._perm = epoch, torch.randperm(len(self.data), generator=g)
            if not self.streamed:
                self._perm = self._perm.to(self.device)
        rows = self.data[self._perm[j * self.batch_size:(j + 1) * self.batch_size][self.world.rows(self.batch_size)]]
        if self.streamed and self.device.type == "cuda":
            return rows.pin_memory().to(self.device, non_blocking=True)
        return rows.to(self.device)

    def epochs(self, batches: int) -> float:
        return batches * self.batch_size / len(self.data)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


# Dense peak FLOP/s of data-centre GPUs by precision (vendor datasheets, no sparsity): MFU's denominator.
GPU_PEAKS = {  # name fragment: {precision: FLOP/s}
    "H200": {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12},  # SXM
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "tf32": 60e12, "fp32": 30e12},
    "A10": {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
}
_MEASURED_PEAKS: dict[tuple[str, str, int], float] = {}


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 512, repeats: int = 10) -> float:
    """Best FLOP/s of an n x n matmul on `device` (measured once per process): the peak of a device with no
    datasheet entry, e.g. a CPU with torch's threads."""
    key = (str(device), str(dtype), torch.get_num_threads())
    if key not in _MEASURED_PEAKS:
        a = torch.randn(n, n, device=device).to(dtype)
        best = float("inf")
        for _ in range(repeats + 1):
            start = clock(device)
            a @ a
            best = min(best, clock(device) - start)
        _MEASURED_PEAKS[key] = 2 * n ** 3 / best
    return _MEASURED_PEAKS[key]


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s of one device at the precision training uses, where the number comes from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        kind = "bf16" if precision in ("auto", "bf16") else ("tf32" if torch.backends.cuda.matmul.allow_tf32
                                                               else "fp32")
        for fragment, peaks in GPU_PEAKS.items():
            if fragment in name:
                return peaks[kind], f"{name} {kind} dense datasheet peak"
        dtype = torch.bfloat16 if kind == "bf16" else torch.float32
        return matmul_peak(device, dtype, 4096), f"{name}: measured {kind} 4096² matmul"
    return (matmul_peak(device, torch.float32),
            f"{device.type}: measured fp32 512² matmul, {torch.get_num_threads()} threads")


def throughput(counters: dict[str, Any], examples_per_step: int, steps: int, device: torch.device,
               world_size: int, precision: str) -> dict[str, Any]:
    """What a run's training achieved: world size, seconds per step, examples and FLOPs per second, and MFU, the
    achieved FLOP/s over the world's peak (Chowdhery et al. 2022, PaLM app. B; the peak is named)."""
    seconds = counters["train_seconds"]
    peak, source = peak_flops(device, precision)
    rate = counters["flops"] / seconds if seconds > 0 else None
    return {"world_size": world_size, "step_seconds": seconds / steps,
            "examples_per_second": examples_per_step * steps / seconds if seconds > 0 else None,
            "flops_per_second": rate, "peak_flops": peak * world_size, "peak_flops_source": source,
            "mfu": rate / (peak * world_size) if rate else None}


def clock(device: torch.device) -> float:
    """perf_counter after the device's queued work is done (CUDA runs asynchronously: without the sync a step's
    time would be the time to queue it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextlib.contextmanager
def progress_bar(total: int, completed: int, description: str, *, show: bool = True
                 ) -> Iterator[Callable[..., None]]:
    """A progress bar with ETA and the latest losses; yields update(advance, **losses). Without a terminal, each
    call with losses (every train.log_every steps) writes one plain line instead (genscale/ui.py Progress).
    `show=False` (a data-parallel rank other than 0): the same calls, nothing shown."""
    if not show:
        yield lambda advance=1, **values: None
        return
    with progress(TextColumn("{task.fields[info]}"), unit="step", every=None) as bar:
        task = bar.add_task(description, total=total, completed=completed, info="")

        def update(advance: int = 1, **values: float) -> None:
            info = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            bar.update(task, advance=advance, **({"info": info} if info else {}))
            if info:
                bar.write_line(task)

        yield update
