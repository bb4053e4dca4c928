"""The training loop, shared by every family (only the GAN family exists so far).

setup -> fit -> evaluate: `train_run` builds everything from a RunConfig, restores the latest checkpoint
when resuming, runs the loop with progress, checkpoints and tracking, then evaluates and gates.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from genscale.config import RunConfig
from genscale.data.augment import augment_real, diff_augment, parse_augment
from genscale.data.datasets import DataSplits
from genscale.errors import GenscaleError
from genscale.models.gan import build_gan, count_parameters
from genscale.paths import atomic_write_bytes
from genscale.tracking import Tracker
from genscale.train.checkpoint import (
    latest_step,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    prefixed,
    save_checkpoint,
    unprefixed,
)
from genscale.train.gan import GanStep, identity
from genscale.train.machinery import (
    BatchStream,
    autocast_for,
    count_flops,
    make_ema,
    progress_bar,
    seed_everything,
    to_unit_range,
)

LOSS_NAMES = ("loss_d", "loss_g")


class NonFiniteLossError(GenscaleError):
    pass


@dataclass
class GanRun:
    """Everything a GAN run trains or restores; `tensors()` / `restore()` map it to a checkpoint."""

    g: torch.nn.Module
    d: torch.nn.Module
    ema: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    noise: torch.Generator

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        t_g, m_g = optimizer_to_flat(self.opt_g, "opt_g")
        t_d, m_d = optimizer_to_flat(self.opt_d, "opt_d")
        tensors = {**prefixed(self.g.state_dict(), "g"), **prefixed(self.d.state_dict(), "d"),
                   **prefixed(self.ema.state_dict(), "ema"), **t_g, **t_d,
                   "rng.noise": self.noise.get_state(), "rng.torch": torch.get_rng_state()}
        return tensors, {"opt_g": m_g, "opt_d": m_d}

    def restore(self, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> None:
        self.g.load_state_dict(unprefixed(tensors, "g"))
        self.d.load_state_dict(unprefixed(tensors, "d"))
        self.ema.load_state_dict(unprefixed(tensors, "ema"))
        optimizer_from_flat(self.opt_g, "opt_g", tensors, sidecar["opt_g"])
        optimizer_from_flat(self.opt_d, "opt_d", tensors, sidecar["opt_d"])
        self.noise.set_state(tensors["rng.noise"])
        torch.set_rng_state(tensors["rng.torch"])


def build_gan_run(cfg: RunConfig, image_shape: tuple[int, int, int], device: torch.device) -> GanRun:
    seed_everything(cfg.train.seed)
    m, t = cfg.model, cfg.train
    g, d = build_gan(m.arch, m.size, z_dim=m.z_dim, image_shape=image_shape, loss=m.loss)
    g, d = g.to(device), d.to(device)
    return GanRun(g=g, d=d, ema=make_ema(g, t.ema_decay),
                  opt_g=torch.optim.Adam(g.parameters(), lr=t.lr_g, betas=t.betas),
                  opt_d=torch.optim.Adam(d.parameters(), lr=t.lr_d, betas=t.betas),
                  noise=torch.Generator(device).manual_seed(t.seed))


def gan_step(cfg: RunConfig, run: GanRun) -> GanStep:
    m = cfg.model
    _, policy = parse_augment(cfg.data.augment)
    augment = functools.partial(diff_augment, policy=policy, generator=run.noise) if policy else identity
    return GanStep(run.g, run.d, run.opt_g, run.opt_d, m.loss, m.z_dim, m.gp_weight, run.noise, augment)


def _first_non_finite(window: torch.Tensor, first_step: int) -> str | None:
    bad = (~torch.isfinite(window)).nonzero()
    if len(bad) == 0:
        return None
    row, col = bad[0].tolist()
    return f"step {first_step + row}: {LOSS_NAMES[col]} is {window[row, col].item()}"


def fit(cfg: RunConfig, run_dir: Path, splits: DataSplits, tracker: Tracker | None, device: torch.device
        ) -> tuple[GanRun, dict[str, Any]]:
    """Train to cfg.train.steps, resuming from the run folder's latest checkpoint if there is one."""
    t = cfg.train
    run = build_gan_run(cfg, splits.image_shape, device)
    step_fn = gan_step(cfg, run)
    autocast = autocast_for(device, t.precision)
    stream = BatchStream(splits.train.x.to(device), t.batch_size, t.seed)
    real_ops, _ = parse_augment(cfg.data.augment)
    ckpt_dir = run_dir / "checkpoints"
    step, counters = 0, {"flops_per_step": None, "train_seconds": 0.0}
    if latest_step(ckpt_dir) is not None:
        tensors, sidecar = load_checkpoint(ckpt_dir)
        run.restore(tensors, sidecar)
        step, counters = sidecar["step"], sidecar["counters"]

    def checkpoint() -> None:
        tensors, meta = run.tensors()
        save_checkpoint(ckpt_dir, step, tensors, {**meta, "counters": counters, "image_shape": splits.image_shape,
                                                  "config": cfg.model_dump(mode="json")})

    window: list[torch.Tensor] = []
    started = time.perf_counter()
    with progress_bar(t.steps, step, f"train {cfg.model.arch}") as update:
        while step < t.steps:
            reals = [augment_real(to_unit_range(stream.batch(step * t.d_steps + k)), real_ops, run.noise)
                     for k in range(t.d_steps)]
            if counters["flops_per_step"] is None:  # count once; every step does the same work
                losses, counters["flops_per_step"] = count_flops(lambda: step_fn(reals, autocast))  # noqa: B023
            else:
                losses = step_fn(reals, autocast)
            run.ema.update_parameters(run.g)
            window.append(losses)
            step += 1
            if step % t.log_every == 0 or step == t.steps:
                values = torch.stack(window).cpu()  # (steps in window, 2); one device sync per window
                problem = _first_non_finite(values, step - len(values) + 1)
                if problem:
                    last = latest_step(ckpt_dir)
                    hint = f"; last good checkpoint: step {last}" if last is not None else ""
                    raise NonFiniteLossError(f"training diverged at {problem}{hint} (try a lower learning rate)")
                means = dict(zip(LOSS_NAMES, values.mean(0).tolist(), strict=True))
                window.clear()
                if tracker:
                    tracker.log_metrics(means, step)
                # for watchers without a terminal (a study's driver): where this run is, one small file
                atomic_write_bytes(run_dir / "progress.json", json.dumps({"step": step, "steps": t.steps}).encode())
                update(advance=0, **means)
            update(advance=1)
            if step % t.checkpoint_every == 0 or step == t.steps:
                counters["train_seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                checkpoint()
    counters["epochs"] = stream.epochs(t.steps * t.d_steps)
    counters["flops"] = (counters["flops_per_step"] or 0) * t.steps
    return run, counters


def measure_flops_per_step(cfg: RunConfig, image_shape: tuple[int, int, int]) -> int:
    """FLOPs of one training step of this config (counted on the CPU, as the loop counts its first step)."""
    device = torch.device("cpu")
    run = build_gan_run(cfg, image_shape, device)
    step_fn = gan_step(cfg, run)
    reals = [torch.zeros(cfg.train.batch_size, *image_shape) for _ in range(cfg.train.d_steps)]
    return count_flops(lambda: step_fn(reals, autocast_for(device, "fp32")))[1]


def run_summary(cfg: RunConfig, splits: DataSplits, run: GanRun, counters: dict[str, Any],
                device: torch.device) -> dict[str, Any]:
    """What a study needs of a trial: unique examples D, parameters N, FLOPs C, epochs, time, device."""
    return {"family": cfg.model.family, "arch": cfg.model.arch, "dataset": splits.name,
            "dataset_version": splits.version, "data_size": len(splits.train),
            "params_g": count_parameters(run.g), "params_d": count_parameters(run.d),
            "steps": cfg.train.steps, "flops": counters["flops"], "epochs": counters["epochs"],
            "train_seconds": counters["train_seconds"], "device": str(device)}


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
