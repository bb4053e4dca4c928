"""Why `genscale serve` runs every model from one worker thread: a model run from a thread while another live thread
holds an OpenMP team of its own is slower.

    python benchmarks/serve_threads.py [--repeats 5]

A random-init GPT `mini` (vocabulary 65, block_size 256), 200 sampled tokens after a 16-token prompt, timed in a
worker thread of this process, in three settings run in turn, each in a fresh subprocess:
  alone        the worker thread is the only thread that ran torch ops
  main-matmul  the main thread ran one 1000x1000 matmul (a parallel region: it now holds an OpenMP team), then waits
  main-only    baseline: the same calls in the main thread
Median seconds per call over --repeats after one warm-up; ratio = main-matmul / alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _machine import command, machine

SETTINGS = ("alone", "main-matmul", "main-only")


def child(setting: str, repeats: int) -> list[float]:
    import torch

    from genscale.models.gpt import build_gpt

    torch.manual_seed(0)
    model = build_gpt("mini", vocab_size=65, block_size=256, dropout=0.0, bias=False).eval()
    prompt = torch.randint(65, (1, 16), generator=torch.Generator().manual_seed(0))
    times: list[float] = []

    def work() -> None:
        def call() -> float:
            start = time.perf_counter()
            model.generate(prompt, 200, temperature=0.8, generator=torch.Generator().manual_seed(1))
            return time.perf_counter() - start

        call()
        times.extend(call() for _ in range(repeats))

    if setting == "main-only":
        work()
        return times
    if setting == "main-matmul":
        torch.ones(1000, 1000) @ torch.ones(1000, 1000)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", choices=SETTINGS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_threads.json"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats)))
        return
    runs = {}
    for setting in SETTINGS:
        out = subprocess.run([sys.executable, __file__, "--child", setting, "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
        runs[setting] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{setting:12} median {statistics.median(runs[setting]):.3f} s  {[round(x, 3) for x in runs[setting]]}",
              flush=True)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    result = {"command": command(), "machine": machine(), "seconds": runs,
              "median_s": {k: round(v, 4) for k, v in medians.items()},
              "ratio_main_matmul_over_alone": round(medians["main-matmul"] / medians["alone"], 3)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"ratio main-matmul / alone: {result['ratio_main_matmul_over_alone']:.2f}  -> {args.out}")


if __name__ == "__main__":
    main()
