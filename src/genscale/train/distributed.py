"""Data-parallel training: the world of ranks, the rows of a global batch each rank computes, and the launcher of
`genscale train --nproc N`.

One rule makes a data-parallel run the same computation as a single-process one: **every rank makes every random
draw of a step for the global batch and keeps its own rows** (`draw_rows`), reads only its own rows of the seeded
batch order (`World.rows`), and batch norm normalises with the statistics of the global batch (`sync_batchnorm`).
Gradients are averaged over ranks (DistributedDataParallel), so N steps at any world size give the same weights
within float rounding, and a run checkpointed at one world size resumes at another. Only dropout masks, drawn
from each rank's own torch generator, depend on the world size.

NCCL on CUDA, gloo on the CPU (so `train.gpus: N` runs as N CPU processes on a machine without GPUs).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from genscale.errors import GenscaleError, RankStopped

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=30)  # a collective waits this long (rank 0 may be evaluating or checkpointing)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a data-parallel run (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, tracks, evaluates and writes checkpoints."""
        return self.rank == 0

    def share(self, n: int, what: str) -> int:
        """This rank's part of `n` rows; `n` must divide evenly (`what` names the setting in the error)."""
        if n % self.size:
            raise GenscaleError(f"{what}: {n} does not divide evenly over {self.size} data-parallel processes "
                                f"(train.gpus); use a multiple of {self.size}")
        return n // self.size

    def rows(self, n: int) -> slice:
        """This rank's contiguous rows of a global batch of `n`."""
        per = n // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` under DistributedDataParallel (gradients averaged over ranks in its backward); itself alone.
        Buffers are not broadcast: synced batch norm keeps them equal on every rank already."""
        if self.size == 1:
            return module
        device = next(module.parameters()).device
        return nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                                   forward_sync_buffers=False)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of `x` over ranks (x itself alone)."""
        if self.size == 1:
            return x
        x = x.clone()
        dist.all_reduce(x)
        return x / self.size

    def total(self, value: int) -> int:
        """The sum of an integer over ranks."""
        if self.size == 1:
            return value
        x = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(x)
        return int(x.item())

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


SINGLE = World()

_ROWS: ContextVar[World | None] = ContextVar("genscale_data_parallel_rows", default=None)


@contextlib.contextmanager
def rank_rows(world: World) -> Iterator[None]:
    """Within: `draw_rows` draws for the global batch of `world` and keeps this rank's rows (the loop wraps each
    training step in it)."""
    token = _ROWS.set(world if world.size > 1 else None)
    try:
        yield
    finally:
        _ROWS.reset(token)


def draw_rows(draw: Callable[[int], torch.Tensor], n: int) -> torch.Tensor:
    """`draw(n)`: random numbers for a batch of `n` rows (row i of the result belongs to example i).

    Inside a data-parallel step (`rank_rows`), `n` is this rank's share: every rank then calls `draw(n * world
    size)` and keeps its own rows, so the generator moves exactly as in a single process and each example gets the
    numbers it would get there. The extra draws are the price (noise for the global batch, not the network's work).
    """
    world = _ROWS.get()
    if world is None:
        return draw(n)
    return draw(n * world.size)[world.rank * n:(world.rank + 1) * n]


def world_from_env() -> World:
    """The world torchrun (or `train --nproc`) started this process in; a single process without those variables."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    try:
        return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    except (KeyError, ValueError):
        raise GenscaleError("RANK, WORLD_SIZE, LOCAL_RANK: set by torchrun as integers; this process has "
                            f"RANK={os.environ.get('RANK')!r} WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}") from None


def join(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo elsewhere) and return this rank's device (cuda:LOCAL_RANK)."""
    if world.size == 1:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise GenscaleError(f"train.gpus: local rank {world.local_rank} has no GPU ({torch.cuda.device_count()} "
                                "visible); start at most one process per GPU")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise GenscaleError(f"train.device: data-parallel training runs on cuda (NCCL) or cpu (gloo), not "
                            f"{device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank,
                                world_size=world.size, timeout=TIMEOUT)
    # the launcher ends every rank when one fails: stop cleanly (tracker, lock) instead of dying mid-write
    signal.signal(signal.SIGTERM, _stop)
    return device


def _stop(signum: int, frame: Any) -> None:
    raise RankStopped("stopped: another rank of this data-parallel run failed (its error is above)")


def peer_failed(e: BaseException) -> bool:
    """Whether a collective failed because another rank went away (gloo: its connection closed)."""
    return isinstance(e, dist.DistError) or "Connection closed by peer" in str(e) or "Connection reset" in str(e)


def leave(world: World) -> None:
    """Leave the process group; a late SIGTERM from the launcher now just ends the process."""
    if world.size > 1:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if dist.is_initialized():
            dist.destroy_process_group()


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is the all_reduce(SUM) of the incoming gradients (every rank's output
    depends on every rank's input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch of a gloo (CPU) world: per-channel sums of x and x^2 are summed over ranks,
    differentiably, before normalising (Ioffe & Szegedy 2015 with the batch spread over processes). torch's
    SyncBatchNorm does this on CUDA only. Same parameters and buffers as the BatchNorm it replaces."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        c, count = x.shape[1], x.numel() // x.shape[1] * dist.get_world_size()
        wide = x.double()  # E[x^2] - E[x]^2 cancels: sums in float64
        sums = _SumOverRanks.apply(torch.cat([wide.sum(dims), (wide * wide).sum(dims)]))  # (2C,)
        mean = sums[:c] / count
        var = (sums[c:] / count - mean * mean).clamp_min(0)  # biased, as batch norm normalises
        with torch.no_grad():  # running stats as nn.BatchNorm keeps them (unbiased variance)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_((var * count / max(count - 1, 1)).to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked += 1
        shape = (1, c) + (1,) * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps) * self.weight
        return (x - mean.view(shape).to(x.dtype)) * scale.view(shape).to(x.dtype) + self.bias.view(shape).to(x.dtype)


def sync_batchnorm(module: nn.Module, world: World) -> nn.Module:
    """Every BatchNorm of `module` normalising over the global batch: torch's SyncBatchNorm on CUDA,
    CrossRankBatchNorm on the CPU; unchanged for a single process. State-dict keys stay the same."""
    if world.size == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return module
    if next(module.parameters()).device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for m in module.modules():
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            m.__class__ = CrossRankBatchNorm  # same fields; only forward differs
    return module


# --- the launcher of `genscale train --nproc N` -------------------------------------------------------------------

def launch(args: Sequence[str], nproc: int, *, threads: int | None = None) -> int:
    """Run `python <args>` (e.g. -m genscale train CONFIG) as `nproc` ranks on this machine (torchrun's elastic
    agent, standalone rendezvous) and return the exit status. When a rank fails the agent stops the others; a rank
    that failed with an `error:` line has said why, anything else (a signal, an out-of-memory kill) is said here in
    one line.

    On the CPU each rank gets `threads` torch threads (default: the cores divided among the ranks)."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # a failure is said below, once
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id="genscale",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode in (1, 2, 130):  # the rank said why: its error line (cli.friendly), gate FAIL (--strict)
            return failure.exitcode
        how = (f"was killed by {failure.signal_name()}" + (" (out of memory?)" if failure.signal_name() == "SIGKILL"
                                                            else "")
               if failure.exitcode < 0 else f"exited with status {failure.exitcode}")
        print(f"error: rank {rank} of {nproc} {how}; the run's last intact checkpoint is kept, continue it with "
              "`genscale train --resume RUN`", file=sys.stderr)
        return 1
    return 0
