"""The GPT family: next-token prediction with gradient accumulation, a cosine learning-rate schedule with warm-up,
AdamW with weight decay on matrices only, and gradient clipping; and the recipe the shared loop drives.

Batches are random windows of the tokenized training stream (a memory-mapped shard), drawn from a seeded
generator whose state is checkpointed, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genscale.config import RunConfig
from genscale.data.tokens import TextData
from genscale.errors import GenscaleError
from genscale.models.gpt import GPT, build_gpt, count_parameters, decay_groups
from genscale.train.checkpoint import (
    load_checkpoint,
    load_state,
    optimizer_from_flat,
    optimizer_to_flat,
    prefixed,
    unprefixed,
)
from genscale.train.distributed import SINGLE, World
from genscale.train.machinery import autocast_for, count_flops, seed_everything
from genscale.ui import console


def cosine_lr(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of `step` (0-based): linear warm-up to `lr` over `warmup_steps`, then a half-cosine decay to
    `min_lr` at `total_steps` (Loshchilov & Hutter 2017 without restarts; the schedule of GPT-3, Brown et al. 2020)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


class TokenBatches:
    """(x, y) batches of `batch_size` windows at random offsets i of a token stream: x = data[i:i+T],
    y = data[i+1:i+T+1]. Offsets come from `generator` (on the CPU), so its state fixes the sequence of batches."""

    def __init__(self, data: np.ndarray, *, block_size: int, batch_size: int, generator: torch.Generator,
                 device: torch.device):
        if len(data) <= block_size:
            raise GenscaleError(f"data.size: the training split has {len(data)} tokens, not more than "
                                f"model.block_size {block_size}; use more data or a shorter context")
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.generator, self.device = generator, device
        self._window = np.arange(block_size + 1)

    def starts(self) -> torch.Tensor:
        """The next batch's window offsets, (B,): the draw alone (a data-parallel rank draws every batch)."""
        return torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=self.generator)

    def __call__(self, starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) at `starts` (default: the next draw), each (len(starts), T)."""
        starts = self.starts() if starts is None else starts
        windows = torch.from_numpy(self.data[starts.numpy()[:, None] + self._window].astype(np.int64))  # (B, T+1)
        if self.device.type == "cuda":
            windows = windows.pin_memory().to(self.device, non_blocking=True)
        return windows[:, :-1], windows[:, 1:]


def build_model(cfg: RunConfig, vocab_size: int) -> GPT:
    m = cfg.model
    return build_gpt(m.size, vocab_size=vocab_size, block_size=m.block_size, dropout=m.dropout, bias=m.bias)


TIED = ("lm_head.weight", "wte.weight")  # the output head is the token embedding (weight tying)


def weights_to_save(model: GPT) -> dict[str, torch.Tensor]:
    """The model's state without the tied output head: safetensors stores no tensor twice."""
    return {k: v for k, v in model.state_dict().items() if k != TIED[0]}


def weights_from_checkpoint(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's full state from a checkpoint's `model.*` tensors (the tied head re-attached)."""
    state = unprefixed(tensors, "model")
    if TIED[1] in state:
        state[TIED[0]] = state[TIED[1]]
    return state


def load_init_weights(model: GPT, init_dir: Path) -> None:
    """Copy the final weights of the run in `init_dir` into `model` (fine-tuning); the shapes must agree."""
    ckpt = load_checkpoint(init_dir / "checkpoints")
    state, sidecar = weights_from_checkpoint(ckpt.tensors), ckpt.sidecar
    own = model.state_dict()
    wrong = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if wrong:
        theirs = sidecar["config"]["model"]
        raise GenscaleError(f"model.init_from {init_dir}: its network does not fit this one (size "
                            f"{theirs['size']}, block_size {theirs['block_size']}, bias {theirs['bias']}; "
                            f"first mismatch: {wrong[0]}); use the same model.size, block_size and bias")
    model.load_state_dict(state)


def micro_batches(world: World, grad_accum: int, batch_size: int) -> tuple[slice, slice]:
    """(this rank's micro-batches of a step's `grad_accum`, its rows of each): the step is the same whatever the
    world size. nanoGPT's rule first: the micro-batches are divided over the ranks (each rank accumulates
    grad_accum / world size of them); when they do not divide, every micro-batch's rows are."""
    if grad_accum % world.size == 0:
        share = grad_accum // world.size
        return slice(world.rank * share, (world.rank + 1) * share), slice(None)
    if batch_size % world.size == 0:
        return slice(None), world.rows(batch_size)
    raise GenscaleError(f"train.grad_accum {grad_accum} and train.batch_size {batch_size}: neither divides over "
                        f"{world.size} data-parallel processes (train.gpus); make one a multiple of {world.size}")


class GptRecipe:
    """The GPT family for the shared loop. Per step: set the scheduled learning rate, accumulate gradients over
    `grad_accum` micro-batches (gradients averaged over data-parallel ranks on the last one only), clip the
    global norm, one AdamW update. Logs loss, gradient norm (before clipping) and learning rate."""

    log_names = ("loss", "grad_norm", "lr")

    def __init__(self, cfg: RunConfig, data: TextData, device: torch.device, *, init_dir: Path | None = None,
                 world: World = SINGLE):
        t = cfg.train
        self.cfg, self.data = cfg, data
        seed_everything(t.seed)
        self.model = build_model(cfg, data.tokenizer.vocab_size).to(device)
        if init_dir is not None:
            load_init_weights(self.model, init_dir)
        self.world, self.mine = world, micro_batches(world, t.grad_accum, t.batch_size)
        self.synced = world.wrap(self.model)  # nanoGPT's order: DDP, then compile
        self.forward: nn.Module = torch.compile(self.synced) if t.compile else self.synced
        self.compile_failed = False
        self.opt = torch.optim.AdamW(decay_groups(self.model, t.weight_decay), lr=t.lr,
                                     betas=t.betas, fused=device.type == "cuda")
        self.generator = torch.Generator().manual_seed(t.seed)
        self.batches = TokenBatches(data.train, block_size=cfg.model.block_size, batch_size=t.batch_size,
                                    generator=self.generator, device=device)

    def lr(self, step: int) -> float:
        t = self.cfg.train
        return cosine_lr(step, lr=t.lr, min_lr=t.lr * t.min_lr_ratio, warmup_steps=t.warmup_steps,
                         total_steps=t.steps)

    def step(self, step: int, autocast: Callable[[], Any], *, eager: bool = False) -> torch.Tensor:
        t = self.cfg.train
        lr = self.lr(step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        model = self.synced if eager else self.forward
        self.model.train()
        total = torch.zeros((), device=self.model.lm_head.weight.device)
        draws = [self.batches.starts() for _ in range(t.grad_accum)]  # every rank draws all: one generator state
        micro, rows = self.mine
        mine = [starts[rows] for starts in draws[micro]]
        for i, starts in enumerate(mine):
            x, y = self.batches(starts)
            last = i == len(mine) - 1
            with contextlib.nullcontext() if last or self.world.size == 1 else self.synced.no_sync():
                with autocast():
                    loss = self._loss(model, x, y)
                (loss / len(mine)).backward()  # the mean over all micro-batches' tokens, as one big batch
            total += loss.detach()
        max_norm = t.grad_clip if t.grad_clip > 0 else math.inf  # inf: measure the norm, clip nothing
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return torch.stack([total / len(mine), norm.detach(), torch.tensor(lr, device=total.device)]).float()

    def _loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The model's loss; if torch.compile fails on the first compiled call (no compiler, an unsupported
        platform), a note, and the run goes on without it."""
        try:
            return model(x, y)[1]
        except Exception as e:  # noqa: BLE001  dynamo/inductor raise many kinds; any of them means "run eager"
            if model is self.synced or self.compile_failed:
                raise
            self.compile_failed = True
            console.print(f"note: train.compile: torch.compile failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}); training continues without it",
                          highlight=False)
            self.forward = self.synced
            return self.synced(x, y)[1]

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        t_opt, m_opt = optimizer_to_flat(self.opt, "opt")
        tensors = {**prefixed(weights_to_save(self.model), "model"), **t_opt,
                   "rng.batches": self.generator.get_state(), "rng.torch": torch.get_rng_state()}
        return tensors, {"opt": m_opt, "tokenizer_sha256": self.data.tokenizer.sha256}

    def restore(self, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> None:
        load_state(self.model, weights_from_checkpoint(tensors), "checkpoint")
        optimizer_from_flat(self.opt, "opt", tensors, sidecar["opt"])
        self.generator.set_state(tensors["rng.batches"])
        torch.set_rng_state(tensors["rng.torch"])

    def sampler(self):
        from genscale.families.gpt import GptSampler

        return GptSampler(self.model, self.data.tokenizer, self.model.lm_head.weight.device)

    def tokens_per_step(self) -> int:
        t = self.cfg.train
        return t.grad_accum * t.batch_size * self.cfg.model.block_size

    def epochs(self, steps: int) -> float:
        return steps * self.tokens_per_step() / len(self.data.train)

    def summary(self) -> dict[str, Any]:
        """What a study needs of the model and data: unique training tokens D and parameters N; and how the data
        was split into train and held-out."""
        return {"dataset": self.data.name, "dataset_version": self.data.version, "split": self.data.split,
                "data_size": len(self.data.train),
                "params": count_parameters(self.model), "tokenizer": self.data.tokenizer.kind,
                "vocab_size": self.data.tokenizer.vocab_size, "tokens_per_step": self.tokens_per_step()}


def gpt_flops_per_step(cfg: RunConfig, vocab_size: int) -> int:
    """FLOPs of one training step of this config (forward and backward of every micro-batch; counted on the CPU with
    zero tokens, as the loop counts its first step)."""
    t, m = cfg.train, cfg.model
    model = build_model(cfg, vocab_size)
    x = torch.zeros(t.batch_size, m.block_size, dtype=torch.long)

    def step() -> None:
        for _ in range(t.grad_accum):
            with autocast_for(torch.device("cpu"), "fp32")():
                _, loss = model(x, x)
            loss.backward()

    return count_flops(step)[1]
