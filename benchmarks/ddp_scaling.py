"""Data-parallel scaling on this machine's CPU: 1 process against 2 gloo processes (1 thread each), for the DCGAN and
the character GPT presets, and the study's "2x GPUs" numbers that follow from it.

    python benchmarks/ddp_scaling.py [--repeats 3] [--steps 120]

Each repeat runs `genscale train CONFIG --nproc 1` and then `--nproc 2` on the same config and global batch
(OMP_NUM_THREADS=1 in every process), alternating. Throughput is the steady state: the steps between the
checkpoint at half the run and the end, over the loop's own `train_seconds` between them (read from the two
checkpoints' sidecars: `genscale.study.execute.steady_examples_per_second`, what a study's GPU probe uses), so the
FLOP-counted first step, start-up and checkpoint writes are outside it. Efficiency =
throughput(2) / (2 x throughput(1)), per repeat; the study's GPU arm is then "2 e x the compute at equal wall time".
The result (with the command and machine) goes to benchmarks/results/ddp_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _machine import command, machine

from genscale.study.execute import steady_examples_per_second

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    # name: (config, overrides, unit)
    "dcgan-small": ("dcgan-fmnist", [], "images"),
    "gpt-mini": ("gpt-char-shakespeare", [], "tokens"),
}


def train(config: str, overrides: list[str], nproc: int, steps: int, runs: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GENSCALE_RUNS": str(runs)}
    sets = [f"--set=train.steps={steps}", f"--set=train.checkpoint_every={steps // 2}", "--set=eval.on_train_end=false",
            "--set=train.log_every=10", *(f"--set={o}" for o in overrides)]
    before = set(runs.glob("*/summary.json"))
    done = subprocess.run([sys.executable, "-m", "genscale", "train", config, *sets, "--nproc", str(nproc)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{config} --nproc {nproc} failed:\n{done.stderr[-3000:]}")
    (summary,) = set(runs.glob("*/summary.json")) - before
    s = json.loads(summary.read_text())
    rate = steady_examples_per_second(summary.parent, steps, s["examples_per_step"])  # GPT: tokens
    return {"per_second": rate, "world_size": s["world_size"],
            "mfu": s["mfu"], "peak_flops_source": s["peak_flops_source"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=120)
    args = ap.parse_args()
    out: dict = {"command": command(), "machine": machine(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, overrides, unit) in MODELS.items():
            rows = []
            for r in range(args.repeats):
                one = train(config, overrides, 1, args.steps, Path(tmp))
                two = train(config, overrides, 2, args.steps, Path(tmp))
                eff = two["per_second"] / (2 * one["per_second"])
                rows.append({"one": one, "two": two, "efficiency": eff})
                print(f"{name} repeat {r}: 1 process {one['per_second']:.1f} {unit}/s, 2 processes "
                      f"{two['per_second']:.1f} {unit}/s, efficiency {eff:.3f}", flush=True)
            effs = [row["efficiency"] for row in rows]
            med = statistics.median(effs)
            out["models"][name] = {
                "config": config, "unit": unit, "repeats": rows, "efficiency_median": med,
                "efficiency_range": [min(effs), max(effs)],
                "per_second_1": statistics.median(r["one"]["per_second"] for r in rows),
                "per_second_2": statistics.median(r["two"]["per_second"] for r in rows),
                "gpu_arm": f"2x processes at equal wall time = {2 * med:.2f}x the compute (efficiency {med:.3f})"}
            print(f"{name}: efficiency median {med:.3f} [{min(effs):.3f}, {max(effs):.3f}] -> "
                  f"{out['models'][name]['gpu_arm']}", flush=True)
    path = ROOT / "benchmarks" / "results" / "ddp_scaling.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
