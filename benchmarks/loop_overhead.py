"""Step time of genscale's training loop vs a bare PyTorch loop of the same model, batch and optimizer.

Both loops run in this one process, alternating, on the same data held in memory. The bare loop does
the same arithmetic per step (D update on a real batch, then G update through a frozen D, then an EMA
update) and nothing else; genscale's loop adds what it always does: progress bar, loss logging to the
MLflow SQLite store, the non-finite check, checkpoints, and the one-off FLOP count.

    python benchmarks/loop_overhead.py [--steps 500] [--repeats 6] [--arch dcgan --size small]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _machine import command, machine

from genscale.config import RunConfig
from genscale.data.datasets import load_image_data
from genscale.models.gan import build_gan
from genscale.tracking import Tracker
from genscale.train.gan import GanRecipe
from genscale.train.loop import fit
from genscale.train.machinery import make_ema


def bare_loop(cfg: RunConfig, x: torch.Tensor, steps: int) -> float:
    """The loop a user writes by hand; returns seconds per step."""
    torch.manual_seed(cfg.train.seed)
    g, d = build_gan(cfg.model.arch, cfg.model.size, z_dim=cfg.model.z_dim, image_shape=tuple(x.shape[1:]))
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.train.lr_g, betas=cfg.train.betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.train.lr_d, betas=cfg.train.betas)
    ema = make_ema(g, cfg.train.ema_decay)
    bs, z_dim = cfg.train.batch_size, cfg.model.z_dim
    per_epoch = len(x) // bs
    start = time.perf_counter()
    for i in range(steps):
        if i % per_epoch == 0:
            perm = torch.randperm(len(x))
        j = i % per_epoch
        real = x[perm[j * bs:(j + 1) * bs]].float() / 127.5 - 1
        fake = g(torch.randn(bs, z_dim)).detach()
        loss_d = F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        d.requires_grad_(False)
        loss_g = F.softplus(-d(g(torch.randn(bs, z_dim)))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        ema.update_parameters(g)
    return (time.perf_counter() - start) / steps


def genscale_loop(cfg: RunConfig, splits, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "bench")
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": steps})})
        start = time.perf_counter()
        fit(cfg, Path(tmp) / "run", GanRecipe(cfg, splits, torch.device("cpu")), tracker, torch.device("cpu"))
        return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--arch", default="dcgan")
    ap.add_argument("--size", default="small")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "loop_overhead.json"))
    args = ap.parse_args()
    cfg = RunConfig.model_validate({"model": {"arch": args.arch, "size": args.size},
                                    "train": {"device": "cpu", "checkpoint_every": 250, "log_every": 50}})
    splits = load_image_data(cfg.data)
    bare_loop(cfg, splits.train.x, 20)  # warm-up: allocator, thread pool
    bare, ours = [], []
    for r in range(args.repeats):  # alternate which loop goes first, so drift hits both alike
        if r % 2:
            ours.append(genscale_loop(cfg, splits, args.steps))
            bare.append(bare_loop(cfg, splits.train.x, args.steps))
        else:
            bare.append(bare_loop(cfg, splits.train.x, args.steps))
            ours.append(genscale_loop(cfg, splits, args.steps))
        print(f"repeat {r}: bare {bare[-1] * 1e3:.2f} ms/step, genscale {ours[-1] * 1e3:.2f} ms/step")
    result = {"command": command(), "machine": machine(), "model": f"{args.arch}/{args.size}",
              "batch_size": cfg.train.batch_size, "steps": args.steps, "repeats": args.repeats,
              "bare_ms_per_step": [round(b * 1e3, 3) for b in bare],
              "genscale_ms_per_step": [round(o * 1e3, 3) for o in ours],
              "overhead_ratio_median": round(statistics.median(ours) / statistics.median(bare), 4),
              "overhead_ratio_min": round(min(ours) / min(bare), 4),  # least disturbed run of each
              "overhead_ratio_per_repeat": [round(o / b, 4) for o, b in zip(ours, bare, strict=True)]}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
