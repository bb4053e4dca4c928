"""The library face of the CLI: train, evaluate, gate and sample a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from rich.console import Console

from genscale.config import RunConfig, config_from_dict, load_config
from genscale.data.datasets import DataSplits, load_image_data
from genscale.errors import GenscaleError
from genscale.gate import GateResult, apply_gate
from genscale.metrics.evaluate import evaluate_images, generate_images, make_extractor
from genscale.models.gan import build_gan, preset
from genscale.paths import atomic_write_bytes, runs_dir
from genscale.tracking import Tracker, resolve_run_dir
from genscale.train.checkpoint import load_checkpoint, unprefixed
from genscale.train.loop import fit, run_summary, write_config
from genscale.train.machinery import select_device
from genscale.ui import console

results = Console(soft_wrap=True)  # stdout: metrics and the gate verdict

SAMPLE_SEED = 1234  # fixed noise for sample grids, so grids of different runs are comparable


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None, pad: int = 2) -> Path:
    """uint8 (N, C, H, W) -> one PNG grid."""
    n, c, h, w = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images.numpy()):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = \
            img.transpose(1, 2, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
    return path


def tracked_run_id(run_dir: Path) -> str:
    """The MLflow run id of a run folder: recorded in tracking.json, else the folder's name."""
    path = run_dir / "tracking.json"
    return json.loads(path.read_text())["run_id"] if path.exists() else run_dir.name


def load_run(run: str) -> tuple[Path, RunConfig]:
    run_dir = resolve_run_dir(run)
    return run_dir, config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()),
                                     str(run_dir / "config.yaml"))


def load_generator(run_dir: Path, cfg: RunConfig, device: torch.device) -> torch.nn.Module:
    """The EMA generator of the run's latest checkpoint."""
    tensors, sidecar = load_checkpoint(run_dir / "checkpoints")
    g, _ = build_gan(cfg.model.arch, cfg.model.size, z_dim=cfg.model.z_dim,
                     image_shape=tuple(sidecar["image_shape"]), loss=cfg.model.loss)
    g.load_state_dict(unprefixed(unprefixed(tensors, "ema"), "module"))
    return g.to(device).eval()


def _flat_metrics(records: dict[str, dict]) -> dict[str, float]:
    return {k: v["value"] for k, v in records.items()}


def evaluate_and_gate(cfg: RunConfig, run_dir: Path, splits: DataSplits, g: torch.nn.Module,
                      device: torch.device, tracker: Tracker | None, step: int) -> tuple[dict, GateResult]:
    extractor = make_extractor(splits, cfg.eval, device)
    images = generate_images(g, cfg.eval.n_samples, z_dim=cfg.model.z_dim, seed=cfg.train.seed + 1,
                             device=device)
    records = evaluate_images(images, splits, extractor, cfg.eval)
    path = run_dir / "metrics.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored.update(records)
    if hasattr(extractor, "test_accuracy"):
        stored["extractor_test_accuracy"] = {"value": extractor.test_accuracy, "extractor": extractor.id}
    atomic_write_bytes(path, json.dumps(stored, indent=1).encode())
    gate = apply_gate(cfg.gate, _flat_metrics(stored))
    atomic_write_bytes(run_dir / "gate.json", json.dumps({"verdict": gate.verdict,
                                                          "reasons": gate.reasons}, indent=1).encode())
    if tracker:
        tracker.log_metrics(_flat_metrics(records), step)
        tracker.set_tags({**{f"{k}.extractor": v["extractor"] for k, v in records.items()},
                          **{f"{k}.n_gen": v["n_gen"] for k, v in records.items()},
                          "gate": gate.verdict, "gate.reasons": "; ".join(gate.reasons)})
    return records, gate


def print_results(records: dict[str, dict], gate: GateResult) -> None:
    for name, r in records.items():
        results.print(f"{name} = {r['value']:.4f}  ({r['extractor']}, {r['n_gen']} generated vs {r['n_ref']} test)")
    colour = "green" if gate.passed else "red"
    results.print(f"gate: [bold {colour}]{gate.verdict}[/]")
    for reason in gate.reasons:
        results.print(f"  - {reason}")


def train(cfg: RunConfig | None = None, *, resume: str | None = None, run_dir: Path | None = None,
          tags: dict[str, str] | None = None) -> Path:
    """Train a new run from `cfg`, or continue run `resume` from its latest checkpoint; returns the run folder.

    A new run's folder is `<runs>/<MLflow run id>` unless `run_dir` is given (a study puts its trials in its own
    folder); `tags` are added to the MLflow run. The data and device are checked before a run is recorded, so
    bad input leaves no half-made run behind.
    """
    if resume:
        run_dir, cfg = load_run(resume)
    assert cfg is not None
    device = select_device(cfg.train.device)
    splits = load_image_data(cfg.data)
    preset(cfg.model.arch, cfg.model.size)
    if resume:
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, run_id=tracked_run_id(run_dir))
    else:
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, run_name=cfg.name,
                          tags={"family": cfg.model.family, "arch": cfg.model.arch, **(tags or {})})
        run_dir = run_dir or runs_dir() / tracker.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "tracking.json", json.dumps({"run_id": tracker.run_id}).encode())
        write_config(cfg, run_dir)
        tracker.log_params(cfg.model_dump(mode="json"))
        tracker.log_artifact(run_dir / "config.yaml")
    console.print(f"run {tracker.run_id}  ({run_dir})")
    try:
        run, counters = fit(cfg, run_dir, splits, tracker, device)
        summary = run_summary(cfg, splits, run, counters, device)
        atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=1).encode())
        tracker.set_tags({k: v for k, v in summary.items() if k in ("dataset", "dataset_version", "device")})
        tracker.log_metrics({k: summary[k] for k in ("flops", "epochs", "train_seconds", "data_size",
                                                    "params_g", "params_d")}, cfg.train.steps)
        grid = save_grid(generate_images(run.ema.module, 64, z_dim=cfg.model.z_dim, seed=SAMPLE_SEED,
                                         device=device), run_dir / "samples.png")
        tracker.log_artifact(grid)
        if cfg.eval.on_train_end:
            records, gate = evaluate_and_gate(cfg, run_dir, splits, run.ema.module, device, tracker,
                                              cfg.train.steps)
            print_results(records, gate)
        ckpt = run_dir / "checkpoints"
        tracker.log_artifact(ckpt / f"step_{cfg.train.steps:07d}.safetensors", "checkpoint")
        tracker.log_artifact(ckpt / f"step_{cfg.train.steps:07d}.json", "checkpoint")
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return run_dir


def evaluate_run(run: str, *, extractor: str | None = None, n: int | None = None) -> tuple[dict, GateResult]:
    run_dir, cfg = load_run(run)
    if extractor:
        cfg.eval.extractor = extractor
    if n:
        cfg.eval.n_samples = n
    device = select_device(cfg.train.device)
    splits = load_image_data(cfg.data)
    g = load_generator(run_dir, cfg, device)
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, run_id=tracked_run_id(run_dir))
    try:
        records, gate = evaluate_and_gate(cfg, run_dir, splits, g, device, tracker, cfg.train.steps)
    finally:
        tracker.finish()
    return records, gate


def sample_run(run: str, *, n: int, out: Path, seed: int = SAMPLE_SEED) -> Path:
    run_dir, cfg = load_run(run)
    device = select_device(cfg.train.device)
    g = load_generator(run_dir, cfg, device)
    return save_grid(generate_images(g, n, z_dim=cfg.model.z_dim, seed=seed, device=device), out)


def config_for_train(path: str | None, overrides: list[str]) -> RunConfig:
    if path is None:
        raise GenscaleError("train: give a CONFIG file, or --resume RUN")
    return load_config(path, overrides)

