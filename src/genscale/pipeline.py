"""The library face of the CLI: train, evaluate, gate and sample a run, for every family."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from genscale.config import RunConfig, config_with, load_config, read_yaml_mapping, saved_config
from genscale.errors import GenscaleError, RankStopped
from genscale.families import Sampler, family_of
from genscale.families.image import SAMPLE_SEED
from genscale.gate import GateResult, apply_gate
from genscale.paths import atomic_write_bytes, check_output_file, read_json, runs_dir
from genscale.tracking import FOLDER_TAG, NullTracker, Tracker, resolve_run_dir, run_lock, tracking_uri
from genscale.train.distributed import World, join, leave, peer_failed, world_from_env
from genscale.train.loop import Evaluation, Pruned, fit, write_config
from genscale.train.machinery import select_device, throughput
from genscale.ui import console

results = Console(soft_wrap=True)  # stdout: metrics and the gate verdict
GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # what `sample -o` may write an image grid as


def grid_image(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> Image.Image:
    """uint8 (N, C, H, W) -> one image of them in rows of nrow (default: a square), on white."""
    n, c, h, w = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images.numpy()):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = \
            img.transpose(1, 2, 0)
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None, pad: int = 2) -> Path:
    """uint8 (N, C, H, W) -> one PNG grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, nrow, pad).save(path)
    return path


def grid_png(images: torch.Tensor | list[torch.Tensor], nrow: int | None = None, pad: int = 2) -> bytes:
    """uint8 (N, C, H, W) (or a list of such tensors) -> the PNG bytes of their grid (one image, nrow 1 and pad 0:
    that image's PNG)."""
    buffer = io.BytesIO()
    grid_image(torch.cat(list(images)) if isinstance(images, list) else images, nrow, pad).save(buffer, format="PNG")
    return buffer.getvalue()


def tracked_run_id(run_dir: Path) -> str:
    """The MLflow run id of a run folder: recorded in tracking.json, else the folder's name."""
    path = run_dir / "tracking.json"
    record = read_json(path, "tracking record") if path.exists() else {}
    if not isinstance(record, dict) or not isinstance(record.get("run_id", ""), str):
        raise GenscaleError(f"{path}: tracking record is not {{\"run_id\": \"...\"}}")
    return record.get("run_id") or run_dir.name


def load_run(run: str) -> tuple[Path, RunConfig]:
    """(folder, config) of a run given by folder, id, unique id prefix or 'latest'."""
    run_dir = resolve_run_dir(run)
    path = run_dir / "config.yaml"
    return run_dir, saved_config(read_yaml_mapping(path, "run config"), str(path))


def run_tracker(run_dir: Path, *, reopen: bool) -> Tracker | NullTracker:
    """The tracked run of an existing run folder in the user's store; a NullTracker (and a note) if the store does
    not hold it, e.g. a folder copied from another machine. `reopen`: mark it RUNNING (resume), not for eval."""
    run_id = tracked_run_id(run_dir)
    tracker = Tracker.existing(run_id, reopen=reopen)
    if tracker is None:
        console.print(f"note: run {run_id} is not in the tracking store {tracking_uri()}; results are written to "
                      f"{run_dir} only (set MLFLOW_TRACKING_URI to the store that holds it)", highlight=False)
        return NullTracker(run_id)
    return tracker


def load_data(cfg: RunConfig, run_dir: Path | None = None) -> Any:
    """The run's data, as its family loads it (images; tokenized text with the run's own tokenizer)."""
    return family_of(cfg).load_data(cfg, run_dir)


def load_sampler(run_dir: Path, cfg: RunConfig, device: torch.device, *, folder: str = "checkpoints",
                 step: int | None = None) -> tuple[Sampler, int]:
    """The sampler of the run's newest intact checkpoint (or of `step`, in `folder`: best/ holds the best
    checkpoint), and that checkpoint's step."""
    return family_of(cfg).load_sampler(run_dir, cfg, device, folder=folder, step=step)


def _flat_metrics(records: dict[str, dict]) -> dict[str, float]:
    return {k: v["value"] for k, v in records.items()}


def periodic_evaluation(cfg: RunConfig, data: Any, recipe: Any, device: torch.device) -> Evaluation | None:
    """The family's cheap metric of eval.every (None when it is off): images, FID of eval.every_n_samples samples
    against as many validation images; text, val_loss of eval.every_val_tokens held-out tokens."""
    return family_of(cfg).periodic_evaluation(cfg, data, recipe, device)


def score_model(cfg: RunConfig, data: Any, sampler: Sampler, device: torch.device
                ) -> tuple[dict[str, dict], dict[str, dict]]:
    """(the full evaluation's metric records of a sampler on held-out data (images: the test split), facts stored
    beside them: the sampling cost, the domain extractor's own test accuracy)."""
    return family_of(cfg).evaluate(cfg, data, sampler, device)


def evaluate_best(cfg: RunConfig, run_dir: Path, data: Any, device: torch.device,
                  final: dict[str, dict], tracker: Tracker | NullTracker) -> dict | None:
    """The best checkpoint of the metric curve scored with the final evaluation's full budget (the final records
    when the best is the last step), stored in best.json as "metrics" and logged as best.<metric>."""
    path = run_dir / "best.json"
    if not path.exists():
        return None
    best = read_json(path, "best checkpoint record")
    if best["step"] == cfg.train.steps:
        records = final
    else:
        sampler = load_sampler(run_dir, cfg, device, folder="best", step=best["step"])[0]
        records, _ = score_model(cfg, data, sampler, device)
    best["metrics"] = _flat_metrics(records)
    atomic_write_bytes(path, json.dumps(best, indent=1).encode())
    tracker.log_metrics({f"best.{k}": v for k, v in best["metrics"].items()}, best["step"])
    tracker.set_tags({"best.step": best["step"]})
    results.print(f"best checkpoint: step {best['step']} of {cfg.train.steps} ({best['metric']} {best['value']:.4g} "
                  f"on {best['budget']}); at the final evaluation's budget: " +
                  ", ".join(f"{k} = {v:.4f}" for k, v in best["metrics"].items() if k in final))
    return best


def evaluate_and_gate(cfg: RunConfig, run_dir: Path, data: Any, sampler: Sampler, device: torch.device,
                      tracker: Tracker | NullTracker, step: int) -> tuple[dict, GateResult]:
    """Metrics of the trained model's sampler on held-out data, stored in metrics.json, then the gate, stored in
    gate.json; both logged to the tracker."""
    path = run_dir / "metrics.json"
    stored = read_json(path, "metrics file") if path.exists() else {}
    if not isinstance(stored, dict):
        raise GenscaleError(f"{path}: metrics file is not a JSON object; move it away to evaluate again")
    records, facts = score_model(cfg, data, sampler, device)
    stored.update({**facts, **records})
    atomic_write_bytes(path, json.dumps(stored, indent=1).encode())
    gate = apply_gate(cfg.gate.thresholds, _flat_metrics(stored),
                      {k: v["floor"] for k, v in stored.items() if "floor" in v})
    atomic_write_bytes(run_dir / "gate.json", json.dumps({"verdict": gate.verdict,
                                                          "reasons": gate.reasons}, indent=1).encode())
    tracker.log_metrics(_flat_metrics(records), step)
    tracker.set_tags({**{f"{k}.extractor": v["extractor"] for k, v in records.items()},
                      **{f"{k}.n_gen": v["n_gen"] for k, v in records.items()},
                      "gate": gate.verdict, "gate.reasons": "; ".join(gate.reasons)})
    return records, gate


def print_results(records: dict[str, dict], gate: GateResult) -> None:
    for name, r in records.items():
        results.print(f"{name} = {r['value']:.4f}  ({r['extractor']}, {r['n_gen']} generated vs {r['n_ref']} "
                      f"{r.get('ref', 'test')})")
    colour = "green" if gate.passed else "red"
    results.print(f"gate: [bold {colour}]{gate.verdict}[/]")
    for reason in gate.reasons:
        results.print(f"  - {reason}")


def gate_verdict(run_dir: Path) -> str | None:
    """PASS or FAIL as the run's last evaluation judged it (gate.json), or None when it has not been evaluated."""
    path = run_dir / "gate.json"
    return read_json(path, "gate verdict").get("verdict") if path.exists() else None


def register_if_passed(cfg: RunConfig, run_dir: Path, gate: GateResult | None, *, uri: str | None) -> None:
    """`gate.register: NAME`: a run that passed its gate becomes the next version of model NAME in the store `uri`;
    one that failed, or that registering refuses (the store does not hold it), is said to be left out in one line,
    not an error: the run and its verdict stand."""
    from genscale.registry import register_run

    name = cfg.gate.register
    if name is None:
        return
    if gate is None:
        console.print(f"not registered as {name}: not evaluated (eval.on_train_end is false); `genscale eval "
                      f"{run_dir.name}` evaluates and registers it", highlight=False)
    elif not gate.passed:
        console.print(f"not registered as {name}: gate FAIL", highlight=False)
    else:
        try:
            version = register_run(run_dir, cfg, name, uri=uri)
        except GenscaleError as e:
            console.print(f"not registered as {name}: {e}", highlight=False)
            return
        console.print(f"registered {name} version {version.version}", highlight=False)


def train(cfg: RunConfig | None = None, *, resume: str | None = None, run_dir: Path | None = None,
          tags: dict[str, str] | None = None, observe: Callable[[int, float], bool] | None = None) -> Path:
    """Train a new run from `cfg`, or continue run `resume` from its latest checkpoint; returns the run folder.

    A new run's folder is `<runs>/<MLflow run id>` unless `run_dir` is given (a study puts its trials in its own
    folder); `tags` are added to the MLflow run. The data and device are checked before a run is recorded, so
    bad input leaves no half-made run behind. `observe(step, value)` is told every point of the eval.every metric
    curve and may stop the run there by returning True (a tuning trial's pruner): the run raises train/loop.py
    `Pruned` after recording pruned.json and the tag pruned.step; it needs eval.every and one process.

    Started by torchrun (or `genscale train --nproc N`), every rank calls this: rank 0 makes (or reopens) the run
    and tells the others its folder, all train their rows (train/loop.py `fit`), and rank 0 alone evaluates,
    gates and tracks. An error in rank 0's set-up reaches every rank, so none waits for a run that is not made.
    """
    world = world_from_env()
    if resume:
        run_dir, cfg = load_run(resume)
    assert cfg is not None
    if world.size > 1 or cfg.train.gpus > 1:  # what this segment of the run trains on, as the config says it
        try:
            cfg = config_with(cfg, {"train.gpus": world.size}, f"the data-parallel world size {world.size}")
        except GenscaleError as e:  # every rank finds it: rank 0 says it
            raise (RankStopped(str(e)) if world.rank else e) from None
    family = family_of(cfg)
    if observe and (cfg.eval.every is None or world.size > 1):
        raise GenscaleError("a pruned run needs eval.every (its metric curve) and one training process "
                            f"(eval.every is {cfg.eval.every}, {world.size} processes)")
    device = join(world, select_device(cfg.train.device))
    try:
        return _train(cfg, family, device, world, resume=resume, run_dir=run_dir, tags=tags, observe=observe)
    except RuntimeError as e:
        if world.size > 1 and peer_failed(e):  # the rank that failed has said why
            raise RankStopped(str(e)) from None
        raise
    finally:
        leave(world)


def _new_run(cfg: RunConfig, family: Any, data: Any, run_dir: Path | None, tags: dict[str, str] | None
             ) -> tuple[Path, Tracker, Any]:
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, run_name=cfg.name,
                      tags={"family": cfg.model.family, "arch": cfg.model.arch, **(tags or {})})
    run_dir = run_dir or runs_dir() / tracker.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_lock(run_dir)
    atomic_write_bytes(run_dir / "tracking.json", json.dumps({"run_id": tracker.run_id}).encode())
    tracker.set_tags({FOLDER_TAG: str(run_dir.absolute())})
    write_config(cfg, run_dir)
    for path in family.new_run_files(data, run_dir):
        tracker.log_artifact(path)
    tracker.log_params(cfg.model_dump(mode="json"))
    tracker.log_artifact(run_dir / "config.yaml")
    return run_dir, tracker, lock


def _train(cfg: RunConfig, family: Any, device: torch.device, world: World, *, resume: str | None,
           run_dir: Path | None, tags: dict[str, str] | None, observe: Callable[[int, float], bool] | None) -> Path:
    failed: GenscaleError | None = None
    if world.main:
        try:
            data = load_data(cfg, run_dir if resume else None)
            family.check_data(cfg, data)
            if resume:
                lock = run_lock(run_dir)  # before the tracker: a second process on this run must not touch its status
                (run_dir / "pruned.json").unlink(missing_ok=True)  # a pruned run resumed goes on from its checkpoint
                tracker = run_tracker(run_dir, reopen=True)
            else:
                run_dir, tracker, lock = _new_run(cfg, family, data, run_dir, tags)
        except GenscaleError as e:
            failed = e
    outcome = world.broadcast(("error", str(failed)) if failed else ("ok", str(run_dir)))
    if failed:
        raise failed
    if outcome[0] == "error":
        raise RankStopped(outcome[1])
    if not world.main:  # the run exists now; its folder holds what a rank needs (a GPT's tokenizer)
        run_dir = Path(outcome[1])
        data = load_data(cfg, run_dir)
        recipe = family.recipe(cfg, data, device, resume=True, world=world)
        fit(cfg, run_dir, recipe, None, device, None, world)
        return run_dir
    console.print(f"run {tracker.run_id}  ({run_dir})")
    try:
        recipe = family.recipe(cfg, data, device, resume=bool(resume), world=world)
        evaluation = periodic_evaluation(cfg, data, recipe, device)
        if observe:
            evaluation = dataclasses.replace(evaluation, observe=observe)
        counters = fit(cfg, run_dir, recipe, tracker, device, evaluation, world)
        summary = {"family": cfg.model.family, "arch": cfg.model.arch, **recipe.summary(), "steps": cfg.train.steps,
                   "examples_per_step": family.examples_per_step(cfg),
                   "flops": counters["flops"], "epochs": counters["epochs"],
                   "train_seconds": counters["train_seconds"], "device": str(device),
                   **throughput(counters, family.examples_per_step(cfg), cfg.train.steps, device, world.size,
                                cfg.train.precision)}
        atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=1).encode())
        tracker.set_tags({k: v for k, v in summary.items() if k in ("dataset", "dataset_version", "device",
                                                                    "peak_flops_source")})
        tracker.log_metrics({k: summary[k] for k in ("flops", "epochs", "train_seconds", "data_size", "params",
                                                     "world_size", "examples_per_second", "mfu")
                             if summary.get(k) is not None}, cfg.train.steps)
        sampler = recipe.sampler()
        for path in family.write_samples(cfg, data, sampler, run_dir):
            tracker.log_artifact(path)
        gate = None
        if cfg.eval.on_train_end:
            records, gate = evaluate_and_gate(cfg, run_dir, data, sampler, device, tracker, cfg.train.steps)
            print_results(records, gate)
            evaluate_best(cfg, run_dir, data, device, records, tracker)
        ckpt = run_dir / "checkpoints"
        tracker.log_artifact(ckpt / f"step_{cfg.train.steps:07d}.safetensors", "checkpoint")
        tracker.log_artifact(ckpt / f"step_{cfg.train.steps:07d}.json", "checkpoint")
    except Pruned as p:
        atomic_write_bytes(run_dir / "pruned.json", json.dumps({"step": p.step, "steps": cfg.train.steps,
                                                                "flops": p.flops, "train_seconds": p.train_seconds},
                                                               indent=1).encode())
        tracker.set_tags({"pruned.step": p.step})
        tracker.log_metrics({"flops": p.flops, "train_seconds": p.train_seconds}, p.step)
        tracker.finish("KILLED")
        raise
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        lock.release()
    tracker.finish()
    register_if_passed(cfg, run_dir, gate, uri=tracker.uri if isinstance(tracker, Tracker) else None)
    return run_dir


def evaluate_run(run: str, *, extractor: str | None = None, n: int | None = None) -> tuple[dict, GateResult]:
    """Metrics and gate of a run's newest intact checkpoint, logged to its tracked run (its status unchanged); with
    gate.register in its config, a run that passes is registered in your store."""
    run_dir, cfg = load_run(run)
    family = family_of(cfg)
    if extractor:
        if "extractor" not in family.eval_config.model_fields:
            raise GenscaleError(f"eval: --extractor applies to image runs; a {family.name} run's metrics need no "
                                "extractor")
        cfg = config_with(cfg, {"eval.extractor": extractor}, f"--extractor {extractor}")
    if n is not None:
        cfg = config_with(cfg, family.count_settings(n), f"--n {n}")
    device = select_device(cfg.train.device)
    data = load_data(cfg, run_dir)
    sampler, step = load_sampler(run_dir, cfg, device)
    if step != cfg.train.steps:
        console.print(f"note: evaluating checkpoint step {step} of the run's {cfg.train.steps} steps", highlight=False)
    records, gate = evaluate_and_gate(cfg, run_dir, data, sampler, device, run_tracker(run_dir, reopen=False), step)
    register_if_passed(cfg, run_dir, gate, uri=None)
    return records, gate


def run_sampler(run: str, settings: dict[str, Any] | None = None) -> tuple[RunConfig, Sampler]:
    """(config, sampler) of a run's newest intact checkpoint; `settings` (dotted eval keys, e.g. a diffusion
    model's eval.sampling_steps) change how it samples, not what was trained."""
    run_dir, cfg = load_run(run)
    if settings:
        cfg = config_with(cfg, settings, "sample --set")
    return cfg, load_sampler(run_dir, cfg, select_device(cfg.train.device))[0]


def sample_run(run: str, *, n: int, out: Path, seed: int = SAMPLE_SEED, settings: dict[str, Any] | None = None
               ) -> Path:
    """A PNG (or JPEG/WebP/BMP, by `out`'s suffix) grid of n samples from an image run."""
    cfg, sampler = run_sampler(run, settings)
    if sampler.kind != "image":
        raise GenscaleError(f"run {run}: a {cfg.model.family} run samples text; use sample_texts")
    check_output_file(out, GRID_SUFFIXES, "image grid")
    return save_grid(sampler.images(n, seed=seed), out)


def check_sampling(*, n: int | None, top_k: int | None, top_p: float | None, temperature: float,
                   max_new_tokens: int) -> None:
    """The sampling options `genscale sample` and the Python API take, in range."""
    if (n is not None and n < 1) or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1) \
            or temperature < 0 or max_new_tokens < 1:
        raise GenscaleError(f"-n {n} / --top-k {top_k} / --top-p {top_p} / --temperature {temperature} / "
                            f"--max-new-tokens {max_new_tokens}: n >= 1, top-k >= 1, top-p in (0, 1], "
                            "temperature >= 0, max-new-tokens >= 1")


def sample_texts(run: str, *, prompt: str, n: int, max_new_tokens: int, temperature: float, top_k: int | None,
                 top_p: float | None, seed: int = SAMPLE_SEED) -> list[str]:
    """n continuations of `prompt` from a text run."""
    cfg, sampler = run_sampler(run)
    if sampler.kind != "text":
        raise GenscaleError(f"run {run}: a {cfg.model.family} run samples images; --prompt and the text options "
                            "apply to text runs")
    return sampler.texts(n, seed=seed, prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                         top_k=top_k, top_p=top_p)


def config_for_train(path: str | None, overrides: list[str]) -> RunConfig:
    if path is None:
        raise GenscaleError("train: give a CONFIG file, or --resume RUN")
    return load_config(path, overrides)
