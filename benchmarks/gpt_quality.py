"""Text-model quality on a CPU budget, and what pretraining buys a fine-tuned model at equal fine-tuning compute.

    python benchmarks/gpt_quality.py budget [--minutes 10]    # -> results/gpt_budget.json
    python benchmarks/gpt_quality.py finetune                 # -> results/gpt_finetune.json

budget: the character-level preset (gpt-char-shakespeare) trained for as many steps as fit in a fixed
  wall-clock budget on this machine: a 40-step probe run measures the step time, the budget sets train.steps (the
  cosine schedule spans them), then the held-out loss (nats per character) is measured on 65,536 held-out characters.
finetune: pretrain the preset gpt-bpe-sotu (byte-level BPE, State of the Union addresses), then train
  gpt-finetune-shakespeare (a 100,000-token slice of Shakespeare) twice at equal compute — from the
  pretrained weights (model.init_from) and from scratch — and compare held-out loss per character on Shakespeare.
  The scratch run trains its own BPE on Shakespeare's train split (the fine-tuned run must reuse the pretrained
  one); per-character numbers compare across tokenizers.

Every run is an ordinary `genscale train` in a temporary GENSCALE_RUNS folder (the shared cache is reused).
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

from _machine import command, machine

ROOT = Path(__file__).resolve().parents[1]
GENSCALE = [sys.executable, "-m", "genscale.cli"]


def train(config: str, *overrides: str) -> tuple[Path, dict]:
    """Run `genscale train` and return (run folder, {summary, metrics, wall_seconds})."""
    start = time.perf_counter()
    args = [*GENSCALE, "train", config, *[a for o in overrides for a in ("--set", o)]]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    run_dir = Path(done.stdout.strip().splitlines()[-1].removeprefix("run folder: "))
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    return run_dir, {"summary": json.loads((run_dir / "summary.json").read_text()),
                     "metrics": {k: round(v["value"], 4) for k, v in metrics.items()},
                     "wall_seconds": round(time.perf_counter() - start, 1), "overrides": list(overrides)}


def budget(args: argparse.Namespace) -> dict:
    config = "gpt-char-shakespeare"
    _, probe = train(config, "train.steps=40", "eval.on_train_end=false")
    step_seconds = probe["summary"]["train_seconds"] / 40
    steps = int(args.minutes * 60 / step_seconds)
    _, run = train(config, f"train.steps={steps}")
    return {"config": config, "budget_minutes": args.minutes, "probe_seconds_per_step": round(step_seconds, 4),
            "steps": steps, "run": run}


def finetune(args: argparse.Namespace) -> dict:
    pre_dir, pre = train("gpt-bpe-sotu", f"train.steps={args.pretrain_steps}")
    config = "gpt-finetune-shakespeare"
    common = (f"train.steps={args.steps}", f"data.size={args.tokens}")
    _, tuned = train(config, *common, f"model.init_from={pre_dir}")
    _, scratch = train(config, *common)
    key = "val_loss_char"
    return {"pretrain": pre, "finetuned": tuned, "scratch": scratch,
            "finetuned_minus_scratch_val_loss_char": round(tuned["metrics"][key] - scratch["metrics"][key], 4),
            "equal_compute": tuned["summary"]["flops"] == scratch["summary"]["flops"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=["budget", "finetune"])
    p.add_argument("--minutes", type=float, default=10.0, help="budget: wall-clock minutes of training")
    p.add_argument("--pretrain-steps", type=int, default=2000, help="finetune: steps of the sotu pretraining")
    p.add_argument("--steps", type=int, default=500, help="finetune: steps of each Shakespeare run")
    p.add_argument("--tokens", type=int, default=100_000, help="finetune: Shakespeare training tokens (data.size)")
    args = p.parse_args()
    os.environ["GENSCALE_RUNS"] = tempfile.mkdtemp(prefix="genscale-bench-gpt-")
    result = {"command": command(), "machine": machine(), **(budget(args) if args.which == "budget"
                                                             else finetune(args))}
    out = ROOT / "benchmarks" / "results" / f"gpt_{args.which}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
