"""Tuned vs default DCGAN on Fashion-MNIST at equal total training compute, and what median pruning saved.

1. `genscale tune` of the DCGAN preset over the gan family's default space (train.lr_g, train.lr_d, log-uniform
   5e-5..1e-3), --trials T of --steps S each, median pruner on the FID-fmnist curve (eval.every S/4, 500 samples
   against 500 validation images); trial 0 is the preset as given. Its cost: the training FLOPs of every trial, a
   pruned one until it stopped.
2. The preset trained for as many steps as those FLOPs buy (its FLOPs per step are fixed): the default at equal total
   compute. 3. The tuned configuration trained for that many steps too (tuning's cost then not charged).
Every run is scored the same way at its end: FID-fmnist (domain extractor) of --n generated vs the test split.

    python benchmarks/tune_dcgan.py [--trials 8] [--steps 400] [--n 2000] [--out results/tune_dcgan_run1.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _machine import command, machine, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="dcgan-fmnist", help="run config YAML or preset name")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=400, help="training steps of each trial")
    ap.add_argument("--startup-trials", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000, help="generated images of each final FID")
    ap.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "tune_dcgan.json"))
    args = ap.parse_args()
    os.environ["GENSCALE_RUNS"] = tempfile.mkdtemp(prefix="genscale-tune-bench-")

    from genscale.config import config_with, load_config
    from genscale.pipeline import train
    from genscale.tune.search import create_tune, run_tune
    from genscale.tune.space import load_space

    every = max(1, args.steps // 4)
    base = load_config(args.config, [f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}",
                                     f"eval.every={every}", "eval.every_n_samples=500", f"eval.n_samples={args.n}",
                                     "train.device=cpu"])
    metric = "fid_fmnist"

    def final(run_dir: Path) -> dict:
        m = json.loads((run_dir / "metrics.json").read_text())
        s = json.loads((run_dir / "summary.json").read_text())
        return {"fid": round(m[metric]["value"], 3), "steps": s["steps"], "flops": s["flops"],
                "train_seconds": round(s["train_seconds"], 1)}

    started = time.perf_counter()
    tune_dir = create_tune(base, load_space(None, base), trials=args.trials, startup_trials=args.startup_trials,
                           seed=args.seed)
    summary = run_tune(tune_dir)
    tune_seconds = time.perf_counter() - started
    best = summary["best"]
    tuned = final(Path(best["run_dir"]))
    default_short = final(Path(summary["trials"][0]["run_dir"]))  # trial 0: the preset as given
    per_step = default_short["flops"] / default_short["steps"]
    equal_steps = round(summary["spent_flops"] / per_step)
    long_cfg = {"train.steps": equal_steps, "train.checkpoint_every": equal_steps, "eval.every": None}
    default_long = final(train(config_with(base, long_cfg, "equal compute")))
    tuned_long = final(train(config_with(config_with(base, best["params"], "best"), long_cfg, "equal compute")))
    result = {
        "benchmark": "tune_dcgan", "command": command(), "machine": machine(),
        "settings": {"trials": args.trials, "steps_per_trial": args.steps, "eval_every": every,
                     "startup_trials": args.startup_trials, "n": args.n, "sampler_seed": args.seed,
                     "space": json.loads((tune_dir / "tune.json").read_text())["space"]},
        "trials": [{k: r.get(k) for k in ("number", "state", "value", "params", "flops", "stopped_at")}
                   for r in summary["trials"]],
        "tuning": {"spent_flops": summary["spent_flops"], "wall_seconds": round(tune_seconds, 1),
                   "pruned": summary["pruning"]["pruned"], "flops_saved_by_pruning": summary["pruning"]["flops_saved"],
                   "saved_share": round(summary["pruning"]["saved_share"], 3), "best_params": best["params"]},
        "default_at_trial_steps": default_short,
        "tuned_best_trial": tuned,
        "default_at_equal_compute": default_long,
        "tuned_config_at_equal_compute_steps": tuned_long,
        "ratio_fid_tuned_over_default_equal_compute": round(tuned["fid"] / default_long["fid"], 3),
        "ratio_fid_tuned_over_default_same_steps": round(tuned["fid"] / default_short["fid"], 3),
        "note": "one training seed per configuration; FID-fmnist is the domain extractor's FID (lower is better)",
    }
    write_result(args.out, result)
    print(json.dumps({k: result[k] for k in ("tuning", "default_at_trial_steps", "tuned_best_trial",
                                             "default_at_equal_compute", "tuned_config_at_equal_compute_steps",
                                             "ratio_fid_tuned_over_default_equal_compute")}, indent=1))


if __name__ == "__main__":
    main()
