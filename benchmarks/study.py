"""Study benchmarks: the demo study's wall time and verdict, and the speedup of Ray workers on one grid.

    python benchmarks/study.py demo [--preset study-demo-text]  # -> results/study_demo_image.json
                                                                             #    (study_demo_text.json, ...)
    python benchmarks/study.py workers [--workers 1 2]   # -> results/study_workers.json

`demo` runs `genscale study run study-demo-image --workers 2` as a user would (the feature
extractor is cached after its first use; whether it was trained in this run is recorded). `workers` runs
the same small grid (8 trials of a tiny DCGAN) once per worker count, each in a fresh study folder, and
reports wall times and the speedup over 1 worker, measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _machine import command, machine

ROOT = Path(__file__).resolve().parents[1]
GENSCALE = [sys.executable, "-m", "genscale.cli"]
WORKERS_GRID = {
    "name": "bench-workers",
    "run": {"data": {"source": "fashion-mnist"}, "model": {"arch": "dcgan", "size": "tiny"},
            "train": {"steps": 300, "batch_size": 64, "ema_decay": 0.99, "checkpoint_every": 300},
            "eval": {"n_samples": 1000, "kid_subsets": 10, "kid_subset_size": 500}},
    "axes": {"data.size": [500, 1000, 2000, 4000], "seed": [0, 1]},
    "metric": "fid_fmnist", "fit": {"bootstrap": 50},
}


def run_study(study: Path, workers: int, out: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([*GENSCALE, "study", "run", str(study), "--workers", str(workers), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"study failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def demo(args: argparse.Namespace) -> dict:
    from genscale.paths import cache_dir

    classifiers = set((cache_dir() / "extractors").glob("fmnist-classifier-*"))
    out = Path(tempfile.mkdtemp(prefix="genscale-demo-study-")) / "study"
    seconds, stdout = run_study(Path(args.preset), 2, out)
    now = set((cache_dir() / "extractors").glob("fmnist-classifier-*"))
    analysis = json.loads((out / "analysis.json").read_text())
    metric = analysis["metric"]
    trials = [json.loads(p.read_text()) for p in sorted(out.glob("trials/*/result.json"))]
    return {"study": args.preset, "workers": 2, "wall_seconds": round(seconds, 1),
            "extractor_trained_in_this_run": bool(now - classifiers), "folder": str(out),
            "verdict": analysis["verdict"], "holdout": analysis["holdout"], "laws": analysis["laws"],
            "skipped": analysis["skipped"], "data_constrained": analysis["data_constrained"],
            "trials": [{k: t[k] for k in ("trial", "D", "N", "C", "epochs", "train_seconds", "wall_seconds")}
                       | {f"{metric} final": t["metrics"][metric],
                          f"{metric} best": (t.get("best") or {}).get("metrics", {}).get(metric),
                          "best_step": (t.get("best") or {}).get("step")} for t in trials],
            "stdout_tail": stdout[-1500:]}


def workers(args: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="genscale-bench-workers-"))
    study = folder / "study.yaml"
    study.write_text(yaml.safe_dump(WORKERS_GRID, sort_keys=False))
    walls = {}
    for n in args.workers:
        walls[n] = round(run_study(study, n, folder / f"w{n}")[0], 1)
    base = walls[args.workers[0]]
    return {"grid": WORKERS_GRID, "trials": 8, "wall_seconds": walls,
            "speedup_vs_first": {n: round(base / s, 3) for n, s in walls.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=["demo", "workers"])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--preset", default="study-demo-image", help="demo: the study (preset name or YAML) to run")
    args = p.parse_args()
    result = demo(args) if args.which == "demo" else workers(args)
    result = {"command": command(), "machine": machine(), **result}
    name = Path(args.preset).stem.removeprefix("study-").replace("-", "_") if args.which == "demo" else args.which
    path = ROOT / "benchmarks" / "results" / f"study_{name}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k not in ("laws", "trials", "stdout_tail")}, indent=1,
                     default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("GENSCALE_CACHE", str(ROOT / "cache"))
    main()
