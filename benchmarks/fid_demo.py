"""Quality of a trained run next to the real-vs-real floor, on both feature extractors.

For the run (default: the newest, e.g. the one `make demo` trained):
  * FID-fmnist / KID-fmnist of N generated samples vs N test images (domain classifier features), and the
    floor: an equal-size, class-balanced train subset vs the same test images, same extractor.
  * Standard Inception FID (2015-12-05 weights) of M generated samples vs M test images, and the same floor.
The Inception network costs ~0.1-0.2 s per image on a CPU, so M is small (2,000 by default).

    python benchmarks/fid_demo.py [--run latest] [--n 10000] [--inception-n 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _machine import command, machine

from genscale.data.datasets import load_image_data, nested_subset
from genscale.metrics.evaluate import evaluate_images, generate_images, make_extractor
from genscale.pipeline import load_run, load_sampler


def measure(cfg, splits, g, extractor_name: str, n: int) -> dict:
    eval_cfg = cfg.eval.model_copy(update={"extractor": extractor_name, "n_samples": n})
    extractor = make_extractor(splits, eval_cfg, torch.device("cpu"))
    start = time.perf_counter()
    generated = generate_images(g, n, z_dim=cfg.model.z_dim, seed=cfg.train.seed + 1, device=torch.device("cpu"))
    gen = evaluate_images(generated, splits, extractor, eval_cfg, "generated")
    real = nested_subset(splits.full_train, n, seed=1).x
    floor = evaluate_images(real, splits, extractor, eval_cfg, "train subset")
    return {"extractor": extractor.id, "n": n, "generated": gen, "real_floor": floor,
            "seconds": round(time.perf_counter() - start, 1),
            **({"classifier_test_accuracy": extractor.test_accuracy} if hasattr(extractor, "test_accuracy") else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="latest")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--inception-n", type=int, default=2000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fid_demo.json"))
    args = ap.parse_args()
    run_dir, cfg = load_run(args.run)
    splits = load_image_data(cfg.data)
    g = load_sampler(run_dir, cfg, torch.device("cpu"))[0].g
    summary = json.loads((run_dir / "summary.json").read_text())
    result = {"command": command(), "machine": machine(), "run": run_dir.name, "config": cfg.name,
              "train_summary": summary,
              "fmnist_classifier": measure(cfg, splits, g, "fmnist-classifier", args.n)}
    print(json.dumps(result["fmnist_classifier"], indent=1))
    if args.inception_n:
        result["inception"] = measure(cfg, splits, g, "inception", args.inception_n)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
