"""Data pipeline benchmarks on Fashion-MNIST's 70,000 images.

    python benchmarks/data_pipeline.py ingest   # -> results/data_ingest_clean.json
    python benchmarks/data_pipeline.py loader   # -> results/data_loader.json
    python benchmarks/data_pipeline.py phash    # -> results/phash_speed.json

`ingest` times `genscale data ingest fashion-mnist` and `genscale data clean` as a user runs them (fresh
GENSCALE_DATA, separate processes; goal: both in under 60 s), and, as the peer for the near-duplicate stage,
`imagehash.phash` called image by image vs genscale's batched pHash (bit-identical) on the same images.

`phash` is the same-run peer comparison alone: genscale's batched pHash and `imagehash.phash` called image by image
on the same 70,000 images, alternating, `--phash-repeats` times each in one process; the ratio of the medians is the
speed-up, and every repeat checks that the hashes are bit-identical.

`loader` measures the training step with the real data path (a stored dataset version's shards loaded into a
uint8 tensor, the loop's seeded BatchStream gather, uint8 -> [-1, 1], on-the-fly augmentation of real images)
against the same step fed from pre-loaded, pre-normalised float tensors, alternating, in one process.
Goal: within 5%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _machine import command, machine

ROOT = Path(__file__).resolve().parents[1]
GENSCALE = [sys.executable, "-m", "genscale.cli"]


def _run(*args: str, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([*GENSCALE, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        sys.exit(f"genscale {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return round(time.perf_counter() - start, 2), done.stdout.strip()


def ingest(args: argparse.Namespace) -> dict:
    from genscale.data.builtin import load_fashion_mnist
    from genscale.data.clean import centred_pixel_distance, hamming_pairs, phash64

    env = {**os.environ, "GENSCALE_DATA": tempfile.mkdtemp(prefix="genscale-bench-data-")}
    t_ingest, out_ingest = _run("data", "ingest", "fashion-mnist", "--name", "fm", env=env)
    t_clean, out_clean = _run("data", "clean", "fm", env=env)
    a = load_fashion_mnist()
    x = np.concatenate([a["x_train"], a["x_test"]])[:, None][: args.phash_images]
    start = time.perf_counter()
    ours = phash64(x)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    ref = _imagehash_loop(x)
    t_ref = time.perf_counter() - start
    # why pHash needs a pixel check on 28x28 images: identical hashes among 10,000 train images, and how far
    # apart those images are in pixels (the near-duplicate rule confirms at <= 6)
    first = x[:10000]
    same = hamming_pairs(phash64(first), 0)[:, :2]
    dist = centred_pixel_distance(first, same)
    return {"images": 70000, "ingest_seconds": t_ingest, "clean_seconds": t_clean,
            "total_seconds": round(t_ingest + t_clean, 2), "goal_seconds": 60,
            "images_per_second": round(70000 / (t_ingest + t_clean)), "ingest_stdout": out_ingest,
            "clean_stdout": out_clean,
            "phash": {"images": len(x), "genscale_batched_seconds": round(t_ours, 2),
                      "imagehash_loop_seconds": round(t_ref, 2), "speedup": round(t_ref / t_ours, 2),
                      "bit_identical": bool((ours == ref).all())},
            "identical_phash_pairs_in_first_10000": {"pairs": len(same),
                                                     "pixel_distance_min": round(float(dist.min()), 2),
                                                     "pixel_distance_median": round(float(np.median(dist)), 2)}}


def _imagehash_loop(x: np.ndarray) -> np.ndarray:
    import imagehash
    from PIL import Image

    return np.stack([imagehash.phash(Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
                                     ).hash.ravel() for img in x])


def phash(args: argparse.Namespace) -> dict:
    from genscale.data.builtin import load_fashion_mnist
    from genscale.data.clean import phash64

    a = load_fashion_mnist()
    x = np.concatenate([a["x_train"], a["x_test"]])[:, None][: args.phash_images]
    ours_s, ref_s, identical = [], [], []
    for _ in range(args.phash_repeats):  # alternating, so a load change on the machine hits both alike
        start = time.perf_counter()
        ours = phash64(x)
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        ref = _imagehash_loop(x)
        ref_s.append(time.perf_counter() - start)
        identical.append(bool((ours == ref).all()))
    return {"images": len(x), "repeats": args.phash_repeats,
            "genscale_batched_seconds": [round(t, 3) for t in ours_s],
            "imagehash_loop_seconds": [round(t, 3) for t in ref_s],
            "speedup_of_medians": round(statistics.median(ref_s) / statistics.median(ours_s), 2),
            "bit_identical_every_repeat": all(identical)}


def _seconds_per_step(step, batch: Callable[[int], torch.Tensor], steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        step([batch(i)], contextlib.nullcontext)
    return (time.perf_counter() - start) / steps


def loader(args: argparse.Namespace) -> dict:
    from genscale.config import RunConfig
    from genscale.data.augment import augment_real, parse_augment
    from genscale.data.datasets import load_image_data
    from genscale.data.ingest import ingest as ingest_version
    from genscale.train.gan import build_gan_run, gan_step
    from genscale.train.machinery import BatchStream, to_unit_range

    os.environ["GENSCALE_DATA"] = tempfile.mkdtemp(prefix="genscale-bench-data-")
    ingest_version("fashion-mnist", "fm")
    results = {}
    for augment in args.augment:
        cfg = RunConfig.model_validate({"data": {"source": "dataset", "dataset": "fm", "augment": augment},
                                        "model": {"arch": "dcgan", "size": args.size},
                                        "train": {"batch_size": 64, "device": "cpu"}})
        splits = load_image_data(cfg.data)
        real_ops, _ = parse_augment(augment)
        pre = to_unit_range(splits.train.x.clone())  # the baseline: float [-1, 1], already in memory
        run = build_gan_run(cfg, splits.image_shape, torch.device("cpu"))
        step = gan_step(cfg, run)
        stream = BatchStream(splits.train.x, 64, 0)
        pre_stream = BatchStream(pre, 64, 0)

        def real_batch(i: int, stream=stream, ops=real_ops, gen=run.noise) -> torch.Tensor:
            return augment_real(to_unit_range(stream.batch(i)), ops, gen)

        _seconds_per_step(step, real_batch, args.steps)  # warm-up
        pairs = [(_seconds_per_step(step, real_batch, args.steps),
                  _seconds_per_step(step, pre_stream.batch, args.steps)) for _ in range(args.repeats)]
        ratios = [a / b for a, b in pairs]
        results[augment] = {"real_loader_ms_per_step": [round(a * 1e3, 2) for a, _ in pairs],
                            "preloaded_ms_per_step": [round(b * 1e3, 2) for _, b in pairs],
                            "ratio_median": round(statistics.median(ratios), 4), "goal": "<= 1.05"}
    return {"arch": "dcgan", "size": args.size, "batch_size": 64, "steps_per_repeat": args.steps,
            "repeats": args.repeats, "results": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=["ingest", "loader", "phash"])
    p.add_argument("--phash-images", type=int, default=70000)
    p.add_argument("--size", default="tiny")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--phash-repeats", type=int, default=3)
    p.add_argument("--augment", nargs="+", default=["none", "hflip,translate"])
    args = p.parse_args()
    result = {"ingest": ingest, "loader": loader, "phash": phash}[args.which](args)
    result = {"command": command(), "machine": machine(), **result}
    name = {"ingest": "data_ingest_clean", "loader": "data_loader", "phash": "phash_speed"}[args.which]
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("GENSCALE_CACHE", str(ROOT / "cache"))
    main()
