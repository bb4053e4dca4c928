"""The data-quality experiment: dirty vs cleaned Fashion-MNIST at equal compute, DiffAugment on/off at 1k/10k.

    python benchmarks/data_quality.py                  # -> results/data_quality.json
    python benchmarks/data_quality.py --recall FOLDER  # add the cleaner's recall of planted records to it

Makes the datasets as a user would (`genscale data ingest fashion-mnist --name fmnist`, then
`genscale data corrupt fmnist --duplicates 0.3 --noise 0.1 --out fmnist-dirty`) in a fresh GENSCALE_DATA folder,
then runs `genscale study run study-data-quality --workers 2`: a tiny DCGAN, 2,000 steps per trial,
data.clean x data.augment x data.size, FID-fmnist from one extractor (trained on fmnist's train split).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import command, machine

ROOT = Path(__file__).resolve().parents[1]
GENSCALE = [sys.executable, "-m", "genscale.cli"]


def run(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([*GENSCALE, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"genscale {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return round(time.perf_counter() - start, 1), done.stdout


def planted_not_removed(datasets: Path) -> dict:
    """How many of the records `data corrupt` planted survived `data clean` (recall of the cleaner)."""
    os.environ["GENSCALE_DATA"] = str(datasets)
    from genscale.data.clean import clean_version
    from genscale.data.store import load_version

    dirty = load_version("fmnist-dirty")
    _, report = clean_version(dirty)  # the cached report of the `data clean` step
    removed = {r["index"] for r in report["removals"]}
    out = {}
    for kind in ("exact-copy", "near-copy", "noise"):
        planted = [i for i, r in enumerate(dirty.records) if r.source.startswith(f"corrupt:{kind}")]
        out[kind] = {"planted": len(planted), "not_removed": sum(i not in removed for i in planted)}
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--recall":  # add the cleaner's recall to a recorded result
        path = ROOT / "benchmarks" / "results" / "data_quality.json"
        result = json.loads(path.read_text())
        result["planted_not_removed"] = planted_not_removed(Path(sys.argv[2]) / "datasets")
        result["recall_command"] = command()
        path.write_text(json.dumps(result, indent=1, default=str))
        print(json.dumps(result["planted_not_removed"], indent=1))
        return
    folder = Path(tempfile.mkdtemp(prefix="genscale-data-quality-"))
    os.environ["GENSCALE_DATA"] = str(folder / "datasets")
    steps = {"ingest": run("data", "ingest", "fashion-mnist", "--name", "fmnist"),
             "corrupt": run("data", "corrupt", "fmnist", "--duplicates", "0.3", "--noise", "0.1",
                            "--out", "fmnist-dirty"),
             "clean": run("data", "clean", "fmnist-dirty")}
    seconds, stdout = run("study", "run", "study-data-quality", "--workers", "2",
                          "--out", str(folder / "study"))
    analysis = json.loads((folder / "study" / "analysis.json").read_text())
    trials = [json.loads(p.read_text()) for p in sorted((folder / "study").glob("trials/*/result.json"))]
    result = {"command": command(), "machine": machine(), "folder": str(folder),
              "data_steps": {k: {"seconds": s, "stdout": o.strip()} for k, (s, o) in steps.items()},
              "study_wall_seconds": seconds, "comparisons": analysis["comparisons"],
              "trials": [{"trial": t["trial"], "axes": t["axes"], "D": t["D"], "C": t["C"],
                          "fid_fmnist": t["metrics"]["fid_fmnist"], "extractor": t["extractor"],
                          "wall_seconds": round(t["wall_seconds"], 1)} for t in trials],
              "failed": analysis["failed"], "planted_not_removed": planted_not_removed(folder / "datasets"),
              "stdout_tail": stdout[-2500:]}
    path = ROOT / "benchmarks" / "results" / "data_quality.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: result[k] for k in ("data_steps", "study_wall_seconds", "comparisons")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("GENSCALE_CACHE", str(ROOT / "cache"))
    main()
