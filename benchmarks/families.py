"""The image families side by side on Fashion-MNIST, and a DDPM's quality against its DDIM steps.

compare: DCGAN (small), the convolutional VAE (small) and a DDPM (UNet tiny) trained for the same counted training
FLOPs C (steps = C / the family's counted FLOPs per step), each scored on the test split with the same extractor and
sample count: FID, precision/recall (k = 3), seconds per sampled image, wall time. One process, one trial at a time.

ddim: the DDPM of `compare` sampled with DDIM in 10, 20, 50, 100 and 1000 steps (eta 0), as DDIM's Table 1 does for
CIFAR-10; FID and precision/recall of the same number of samples at each, and seconds per image.

    python benchmarks/families.py compare [--flops 3e12] [--n 1000]   # -> results/families_compare.json
    python benchmarks/families.py ddim [--n 250]                       # -> results/families_ddim.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from _machine import command, machine

from genscale.config import RunConfig, config_with
from genscale.families import FAMILIES
from genscale.pipeline import load_data, load_run, load_sampler, score_model, train
from genscale.train.machinery import select_device

RESULTS = Path(__file__).parent / "results"
MODELS = {"gan": {"family": "gan", "arch": "dcgan", "size": "small"},
          "vae": {"family": "vae", "arch": "vae-conv", "size": "small"},
          "ddpm": {"family": "ddpm", "arch": "unet", "size": "tiny"}}
SETTINGS = {"gan": {"train": {"ema_decay": 0.99}}, "vae": {"eval": {"iwae_k": 100, "iwae_images": 500}},
            "ddpm": {"train": {"ema_decay": 0.99}, "eval": {"sampling_steps": 50}}}


def config(name: str, flops: float, n: int) -> RunConfig:
    raw = {"name": f"bench-{name}", "data": {"source": "fashion-mnist"}, "model": MODELS[name],
           "train": {"batch_size": 64, "checkpoint_every": 1000, "log_every": 50, "device": "cpu"},
           "eval": {"extractor": "fmnist-classifier", "n_samples": n, "kid_subsets": 20}}
    for section, values in SETTINGS[name].items():
        raw[section].update(values)
    cfg = RunConfig.model_validate(raw)
    per_step = FAMILIES[name].flops_per_step(cfg, load_data(cfg))
    return config_with(cfg, {"train.steps": max(1, round(flops / per_step))}, "benchmark")


def compare(args: argparse.Namespace) -> dict:
    rows = {}
    for name in MODELS:
        cfg = config(name, args.flops, args.n)
        started = time.perf_counter()
        run_dir = train(cfg)
        wall = time.perf_counter() - started
        metrics = json.loads((run_dir / "metrics.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        rows[name] = {"model": MODELS[name], "run": str(run_dir), "steps": cfg.train.steps, "flops": summary["flops"],
                      "params": summary["params"], "train_seconds": summary["train_seconds"], "wall_seconds": wall,
                      "sampling_flops_per_image": summary.get("sampling_flops_per_image"),
                      **{k: metrics[k]["value"] for k in ("fid_fmnist", "precision_fmnist", "recall_fmnist",
                                                          "sampling_seconds_per_image")},
                      "fid_floor": metrics["fid_fmnist"]["floor"],
                      **{k: metrics[k]["value"] for k in ("nelbo", "nelbo_bpd", "iwae_nll", "iwae_bpd")
                         if k in metrics}}
        print(name, json.dumps(rows[name]), flush=True)
    return {"flops": args.flops, "n_samples": args.n, "families": rows}


def ddim(args: argparse.Namespace) -> dict:
    previous = json.loads((RESULTS / "families_compare.json").read_text())
    run_dir, cfg = load_run(previous["families"]["ddpm"]["run"])
    device = select_device(cfg.train.device)
    data = load_data(cfg, run_dir)
    rows = []
    for steps in args.steps:
        c = config_with(cfg, {"eval.sampling_steps": steps, "eval.n_samples": args.n, "eval.sampler": "ddim",
                              "eval.eta": 0.0, "eval.kid_subsets": 20, "eval.kid_subset_size": args.n}, "benchmark")
        sampler, _ = load_sampler(run_dir, c, device)
        records, facts = score_model(c, data, sampler, device)
        row = {"steps": steps, **{k: records[k]["value"] for k in ("fid_fmnist", "precision_fmnist", "recall_fmnist")},
               "fid_floor": records["fid_fmnist"]["floor"],
               "sampling_seconds_per_image": facts["sampling_seconds_per_image"]["value"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"run": str(run_dir), "n_samples": args.n, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("compare")
    p.add_argument("--flops", type=float, default=3e12)
    p.add_argument("--n", type=int, default=1000)
    p = sub.add_parser("ddim")
    p.add_argument("--n", type=int, default=250)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 1000])
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    os.environ.setdefault("GENSCALE_RUNS", tempfile.mkdtemp(prefix="genscale-bench-"))
    result = {"command": command(), "machine": machine(), **(compare(args) if args.what == "compare" else ddim(args))}
    out = RESULTS / f"families_{args.what}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
