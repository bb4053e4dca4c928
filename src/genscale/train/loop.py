"""The training loop, shared by every family.

A family gives the loop a `Recipe`: one optimisation step and the state a checkpoint holds (train/gan.py,
train/gpt.py), and optionally an `Evaluation`: a cheap metric scored every few steps. The loop owns everything else,
written once: resuming from the newest intact checkpoint, progress with the latest logged values, the non-finite
check, tracking, checkpoints, the metric curve with the best checkpoint so far, and the FLOP count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from genscale.config import RunConfig, config_yaml
from genscale.errors import GenscaleError, RankStopped
from genscale.paths import atomic_write_bytes, read_json
from genscale.tracking import Tracker
from genscale.train.checkpoint import (
    NonFiniteCheckpointError,
    checkpoint_steps,
    load_checkpoint,
    remove_partial_writes,
    save_checkpoint,
)
from genscale.train.distributed import SINGLE, World, rank_rows
from genscale.train.machinery import autocast_for, clock, count_flops, progress_bar, select_device
from genscale.ui import info


class NonFiniteLossError(GenscaleError):
    pass


class Pruned(Exception):
    """Raised out of `fit` when the evaluation's `observe` asks the run to stop at a metric point (a tuning trial
    its pruner stopped); carries what the run spent until then."""

    def __init__(self, step: int, flops: int, train_seconds: float):
        super().__init__(f"stopped at step {step}")
        self.step, self.flops, self.train_seconds = step, flops, train_seconds


class Recipe(Protocol):
    """What a family gives the loop."""

    log_names: tuple[str, ...]  # the values `step` returns, logged as window means (losses first)

    def step(self, step: int, autocast: Callable[[], Any], *, eager: bool = False) -> torch.Tensor:
        """One optimisation step; returns the detached values of `log_names`, shape (len(log_names),).
        `eager`: run without torch.compile (the FLOP-counted first step)."""
        ...

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(every tensor to checkpoint, JSON-able values) of the current state."""
        ...

    def restore(self, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> None: ...

    def epochs(self, steps: int) -> float:
        """Passes over the unique training data after `steps` steps."""
        ...

    def summary(self) -> dict[str, Any]:
        """What a study needs of the model and data: "data_size" (unique examples D), "params" (N, counted the
        family's way), "dataset", "dataset_version", and the family's own lines (e.g. params_g, tokenizer)."""
        ...

    def sampler(self) -> Any:
        """The live model as a sampler (families/__init__.py ImageSampler or TextSampler): what the metric curve,
        the samples and the final evaluation use (a GAN's EMA generator, a diffusion model's EMA UNet)."""
        ...


@dataclass
class Evaluation:
    """A lower-is-better metric scored on a cheap, stated budget every `every` steps (and at the last step)."""

    metric: str  # e.g. "fid_fmnist", "val_loss"
    budget: str  # what it is scored on, e.g. "1000 generated vs 1000 validation images"
    every: int
    score: Callable[[], float]
    # told every point (step, value); True stops the run there (Pruned): a tuning trial's pruner
    observe: Callable[[int, float], bool] | None = None


class MetricCurve:
    """The run's metric curve (curve.json) and its best checkpoint so far (best/ and best.json).

    Kept across a resume: points after the resumed checkpoint are scored again (and replaced) as the run reaches them;
    the best is replaced only by a strictly better value, so best.json always names weights that were really trained.
    """

    def __init__(self, run_dir: Path, evaluation: Evaluation):
        self.run_dir, self.evaluation = run_dir, evaluation
        path, best = run_dir / "curve.json", run_dir / "best.json"
        self.points: dict[int, float] = {int(k): v for k, v in read_json(path, "metric curve")["points"]} \
            if path.exists() else {}
        self.best: dict[str, Any] | None = read_json(best, "best checkpoint record") if best.exists() else None

    def add(self, step: int, value: float, recipe: Recipe, tracker: Tracker | None, cfg: RunConfig) -> None:
        ev = self.evaluation
        self.points[step] = value
        atomic_write_bytes(self.run_dir / "curve.json", json.dumps(
            {"metric": ev.metric, "budget": ev.budget, "every": ev.every,
             "points": sorted(self.points.items())}, indent=1).encode())
        if tracker:
            tracker.log_metrics({f"curve.{ev.metric}": value}, step)
        if math.isfinite(value) and (self.best is None or value < self.best["value"]):
            tensors, meta = recipe.tensors()
            save_checkpoint(self.run_dir / "best", step, tensors, {**meta, "config": cfg.model_dump(mode="json")})
            self.best = {"step": step, "metric": ev.metric, "value": value, "budget": ev.budget}
            atomic_write_bytes(self.run_dir / "best.json", json.dumps(self.best, indent=1).encode())


def _first_non_finite(window: torch.Tensor, first_step: int, names: tuple[str, ...]) -> str | None:
    bad = (~torch.isfinite(window)).nonzero()
    if len(bad) == 0:
        return None
    row, col = bad[0].tolist()
    return f"step {first_step + row}: {names[col]} is {window[row, col].item()}"


def fit(cfg: RunConfig, run_dir: Path, recipe: Recipe, tracker: Tracker | None, device: torch.device,
        evaluation: Evaluation | None = None, world: World = SINGLE) -> dict[str, Any]:
    """Train to cfg.train.steps, resuming from the run folder's newest intact checkpoint if there is one; returns
    the counters (flops_per_step, flops, train_seconds, epochs).

    Losses are checked for NaN/infinity at every log window and before every checkpoint, and the checkpoint
    store refuses non-finite tensors, so a diverged run stops at its last good checkpoint and never writes a
    poisoned one. With an `evaluation`, the metric is scored every `evaluation.every` steps and at the end (its
    time is not counted as training time) and the best checkpoint so far is kept (MetricCurve); its `observe`, when
    set, may stop the run at a point (Pruned).

    In a data-parallel `world` every rank runs this loop on its own rows (train/distributed.py); the logged values
    are means over ranks, FLOPs the sum over ranks, and rank 0 alone logs, tracks, scores and writes files. A
    checkpoint holds the state of the whole world (one model, one optimiser, the shared generators, and each
    rank's torch generator for dropout), so it resumes at any world size."""
    t = cfg.train
    autocast = autocast_for(device, t.precision)
    ckpt_dir = run_dir / "checkpoints"
    step, counters, saved = 0, {"flops_per_step": None, "train_seconds": 0.0}, None
    if world.main:
        remove_partial_writes(ckpt_dir)
        remove_partial_writes(run_dir / "best")
    world.barrier()
    if world.rank:  # dropout masks: each rank its own stream (rank 0 keeps the single process's)
        torch.manual_seed(t.seed + 7919 * world.rank)
    if checkpoint_steps(ckpt_dir):  # files there but none intact is an error, never a silent restart from 0
        ckpt = load_checkpoint(ckpt_dir, quiet=not world.main)
        recipe.restore(ckpt.tensors, ckpt.sidecar)
        if world.rank:
            own = ckpt.tensors.get(f"rng.torch.{world.rank}")
            torch.set_rng_state(own) if own is not None else torch.manual_seed(t.seed + 7919 * world.rank + step)
        step, counters, saved = ckpt.step, ckpt.sidecar["counters"], ckpt.step

    def diverged(problem: str) -> GenscaleError:
        hint = f"; last good checkpoint: step {saved}" if saved is not None else ""
        message = f"training diverged at {problem}{hint} (try a lower learning rate)"
        # every rank sees the same means: rank 0 says it, the others stop quietly
        return NonFiniteLossError(message) if world.main else RankStopped(message)

    def checked(window: list[torch.Tensor]) -> torch.Tensor:
        values = world.mean(torch.stack(window)).cpu()  # (steps in window, values); one sync per window
        problem = _first_non_finite(values, step - len(values) + 1, names)
        if problem:
            raise diverged(problem)
        return values

    curve = MetricCurve(run_dir, evaluation) if evaluation and world.main else None
    names = recipe.log_names
    window: list[torch.Tensor] = []
    started = clock(device)
    with progress_bar(t.steps, step, f"train {cfg.model.arch}", show=world.main) as update:
        while step < t.steps:
            with rank_rows(world):
                if counters["flops_per_step"] is None:  # count once; every step does the same work
                    values, flops = count_flops(lambda: recipe.step(step, autocast, eager=True))  # noqa: B023
                    counters["flops_per_step"] = world.total(flops)
                else:
                    values = recipe.step(step, autocast)
            window.append(values)
            step += 1
            means: dict[str, float] = {}
            if step % t.log_every == 0 or step == t.steps:
                means = dict(zip(names, checked(window).mean(0).tolist(), strict=True))
                window.clear()
                if tracker:
                    tracker.log_metrics(means, step)
                if world.main:  # for watchers without a terminal (a study's driver): where this run is
                    atomic_write_bytes(run_dir / "progress.json",
                                       json.dumps({"step": step, "steps": t.steps}).encode())
            update(advance=1, **means)
            if evaluation and (step % evaluation.every == 0 or step == t.steps):
                if window:  # never score (or keep as best) weights whose losses went non-finite
                    checked(window)
                if curve:
                    scoring = clock(device)
                    value = evaluation.score()
                    curve.add(step, value, recipe, tracker, cfg)
                    info(f"eval step {step}: {evaluation.metric} = {value:.4g} ({evaluation.budget})")
                    started += clock(device) - scoring
                    if evaluation.observe and evaluation.observe(step, value):
                        counters["train_seconds"] += clock(device) - started
                        raise Pruned(step, (counters["flops_per_step"] or 0) * step, counters["train_seconds"])
            if step % t.checkpoint_every == 0 or step == t.steps:
                if window:  # a checkpoint can come before its log window ends: check what it holds first
                    checked(window)
                counters["train_seconds"] += clock(device) - started
                rng = world.gather(torch.get_rng_state())
                if world.main:
                    tensors, meta = recipe.tensors()
                    tensors.update({f"rng.torch.{r}": state for r, state in enumerate(rng) if r})
                    try:
                        save_checkpoint(ckpt_dir, step, tensors, {**meta, "counters": counters, "world_size":
                                                                  world.size, "config": cfg.model_dump(mode="json")})
                    except NonFiniteCheckpointError as e:
                        raise diverged(f"the checkpoint of {e}") from None
                world.barrier()  # a rank that fails after this point finds this checkpoint on disk
                started = clock(device)
                saved = step
    counters["epochs"] = recipe.epochs(t.steps)
    counters["flops"] = (counters["flops_per_step"] or 0) * t.steps
    return counters


def probe_step(cfg: RunConfig, data: Any) -> dict[str, Any]:
    """One step of a new run of `cfg` on its configured device, its FLOPs counted as `fit` counts its first step,
    then one more step timed (the counter slows the one it counts): {"flops", "step_seconds", "device"}. Writes
    nothing and evaluates nothing (`genscale study run --dry-run`). Both steps run eager: a torch.compile'd run
    (train.compile) steps faster after its compilation, which this does not time."""
    from genscale.families import family_of

    device = select_device(cfg.train.device)
    recipe = family_of(cfg).recipe(cfg, data, device, resume=False, world=SINGLE)
    autocast = autocast_for(device, cfg.train.precision)
    _, flops = count_flops(lambda: recipe.step(0, autocast, eager=True))
    started = clock(device)
    recipe.step(1, autocast, eager=True)
    return {"flops": flops, "step_seconds": clock(device) - started, "device": str(device)}


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_yaml(cfg))
