"""Step time of genscale's DDPM training vs a bare PyTorch loop of the same UNet, scheduler, batch and optimizer.

Both loops run in this one process, alternating, on the same Fashion-MNIST train images held in memory. The bare
loop does the same arithmetic per step (t ~ U{0..T-1}, ε ~ N(0, I), label dropout for classifier-free guidance,
x_t = sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε with ᾱ from diffusers' own DDPMScheduler table, MSE on ε, gradient clipping to
1.0, Adam at the linear warm-up learning rate, an EMA update) and nothing else; genscale's `fit` driving
`DdpmRecipe` adds what it always does: progress bar, loss logging to the MLflow SQLite store, the non-finite
check, checkpoints (two per timed run) and the one-off FLOP count of the first step.

    python benchmarks/ddpm_step.py [--steps 100] [--repeats 5] [--size small] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _machine import command, machine
from diffusers import DDPMScheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from genscale.config import RunConfig
from genscale.data.datasets import DataSplits, load_image_data
from genscale.models.unet import build_unet
from genscale.tracking import Tracker
from genscale.train.ddpm import DdpmRecipe
from genscale.train.loop import fit


def bare_loop(cfg: RunConfig, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """The loop a user writes by hand for the same model; returns seconds per step."""
    m, t = cfg.model, cfg.train
    torch.manual_seed(t.seed)
    unet = build_unet(m.size, image_shape=tuple(x.shape[1:]), num_classes=10, dropout=m.dropout)
    opt = torch.optim.Adam(unet.parameters(), lr=t.lr, betas=t.betas)
    ema = AveragedModel(unet, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=m.timesteps)
    alphas_cumprod = scheduler.alphas_cumprod  # (T,)
    bs, per_epoch = t.batch_size, len(x) // t.batch_size
    unet.train()
    start = time.perf_counter()
    for i in range(steps):
        for group in opt.param_groups:  # linear warm-up, then constant
            group["lr"] = t.lr * min(1.0, (i + 1) / t.warmup_steps) if t.warmup_steps else t.lr
        if i % per_epoch == 0:
            perm = torch.randperm(len(x))
        idx = perm[(i % per_epoch) * bs:(i % per_epoch + 1) * bs]
        x0 = x[idx].float() / 127.5 - 1  # (B, 1, 28, 28) in [-1, 1]
        labels = torch.where(torch.rand(bs) < m.p_uncond, unet.null_label, y[idx])  # CFG label dropout
        steps_t = torch.randint(0, m.timesteps, (bs,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[steps_t].view(bs, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(x_t, steps_t, labels), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), t.grad_clip)
        opt.step()
        ema.update_parameters(unet)
    return (time.perf_counter() - start) / steps


def genscale_loop(cfg: RunConfig, splits: DataSplits, steps: int) -> float:
    """genscale's shared loop driving DdpmRecipe, tracked to a throwaway SQLite store; returns seconds per step.
    The store and the recipe (model build) are made before the clock starts, as the bare loop's model is."""
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "bench")
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": steps})})
        recipe = DdpmRecipe(cfg, splits, torch.device("cpu"))
        start = time.perf_counter()
        fit(cfg, Path(tmp) / "run", recipe, tracker, torch.device("cpu"))
        return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", default="small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ddpm_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cfg = RunConfig.model_validate({
        "model": {"family": "ddpm", "size": args.size},
        "train": {"device": "cpu", "batch_size": args.batch_size, "log_every": 50,
                  "checkpoint_every": max(1, args.steps // 2)}})
    m = cfg.model
    assert m.schedule == "cosine" and m.class_conditional, "the bare loop is written for the cosine, labelled default"
    splits = load_image_data(cfg.data)
    assert splits.num_classes == 10
    x, y = splits.train.x, splits.train.y
    bare_loop(cfg, x, y, 5)  # warm-up: allocator, thread pool, first-call overheads
    genscale_loop(cfg, splits, 5)  # and MLflow's import, rich, the FLOP counter
    bare, ours, load = [], [], []
    for r in range(args.repeats):  # alternate which loop goes first, so drift hits both alike
        if r % 2:
            ours.append(genscale_loop(cfg, splits, args.steps))
            bare.append(bare_loop(cfg, x, y, args.steps))
        else:
            bare.append(bare_loop(cfg, x, y, args.steps))
            ours.append(genscale_loop(cfg, splits, args.steps))
        load.append(round(os.getloadavg()[0], 2))  # other jobs on the cores show up here, not in the ratio
        print(f"repeat {r}: bare {bare[-1] * 1e3:.1f} ms/step, genscale {ours[-1] * 1e3:.1f} ms/step, "
              f"load {load[-1]}", flush=True)
    result = {"command": command(), "machine": machine(), "model": f"unet/{args.size}",
              "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
              "log_every": cfg.train.log_every, "checkpoint_every": cfg.train.checkpoint_every,
              "bare_ms_per_step": [round(b * 1e3, 2) for b in bare],
              "genscale_ms_per_step": [round(o * 1e3, 2) for o in ours],
              "bare_ms_per_step_median": round(statistics.median(bare) * 1e3, 2),
              "genscale_ms_per_step_median": round(statistics.median(ours) * 1e3, 2),
              "overhead_ratio_median": round(statistics.median(ours) / statistics.median(bare), 4),
              "overhead_ratio_min": round(min(ours) / min(bare), 4),  # least disturbed run of each
              "overhead_ratio_per_repeat": [round(o / b, 4) for o, b in zip(ours, bare, strict=True)],
              "load_average_1min_per_repeat": load, "goal": "overhead_ratio_median <= 1.05"}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
