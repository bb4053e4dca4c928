"""Start-up of `genscale runs --json` (a script's first call) against the bare interpreter and `import mlflow`.

Each pair is timed as whole processes, one after the other, alternating which goes first; the ratio is taken pair by
pair (the machine's speed drifts) and the median quoted. Cases:
  no store:   `genscale runs --json` where nothing was tracked yet (no mlflow.db), vs `python -c pass`
  a store:    `genscale runs --json` on a SQLite store holding one run, vs `python -c "import mlflow"`
  help:       `genscale --help`, vs `python -c pass`
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import command, machine, write_result

PY = sys.executable


def wall(args: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return seconds


def pairs(a: list[str], b: list[str], env: dict[str, str], cwd: Path, repeats: int) -> dict:
    wall(a, env, cwd), wall(b, env, cwd)  # warm-up: the page cache, .pyc files
    ta, tb = [], []
    for i in range(repeats):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t1, t2 = wall(first, env, cwd), wall(second, env, cwd)
        ta.append(t1 if first is a else t2)
        tb.append(t2 if first is a else t1)
    return {"command": " ".join(a), "baseline": " ".join(b), "seconds": ta, "baseline_seconds": tb,
            "median_seconds": statistics.median(ta), "baseline_median_seconds": statistics.median(tb),
            "median_ratio": statistics.median(x / y for x, y in zip(ta, tb, strict=True)),
            "median_difference_seconds": statistics.median(x - y for x, y in zip(ta, tb, strict=True))}


def one_run_store(runs: Path, env: dict[str, str]) -> None:
    """A SQLite store with the genscale experiment and one finished run, as a tracked run leaves it."""
    code = ("from genscale.tracking import Tracker; t = Tracker(None, 'genscale', run_name='bench', "
            "tags={'family': 'gan', 'arch': 'dcgan', 'gate': 'PASS'}); t.log_metrics({'flops': 1e12}, 1); t.finish()")
    subprocess.run([PY, "-c", code], env={**env, "GENSCALE_RUNS": str(runs)}, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/cli_startup.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        genscale = [PY, "-m", "genscale"]
        empty, stored = tmp / "empty", tmp / "stored"
        empty.mkdir()
        one_run_store(stored, env)
        results = {
            "no_store": pairs([*genscale, "runs", "--json"], [PY, "-c", "pass"],
                              {**env, "GENSCALE_RUNS": str(empty / "runs")}, empty, args.repeats),
            "store_one_run": pairs([*genscale, "runs", "--json"], [PY, "-c", "import mlflow"],
                                   {**env, "GENSCALE_RUNS": str(stored)}, tmp, args.repeats),
            "help": pairs([*genscale, "--help"], [PY, "-c", "pass"], env, tmp, args.repeats),
        }
        assert not (empty / "runs").exists(), "genscale runs made a folder where there was no store"
    for name, r in results.items():
        print(f"{name}: {r['command']} median {r['median_seconds']:.3f} s; {r['baseline']} "
              f"{r['baseline_median_seconds']:.3f} s; ratio {r['median_ratio']:.2f}, difference "
              f"{r['median_difference_seconds']:+.3f} s")
    write_result(args.out, {"benchmark": "cli_startup", "command": command(), "machine": machine(),
                            "repeats": args.repeats, "results": results})


if __name__ == "__main__":
    main()
