"""Training throughput of genscale's GPT against nanoGPT's train.py: same model, batch, context, schedule and tokens.

    python benchmarks/gpt_nanogpt.py --nanogpt /tmp/nanogpt [--steps 300] [--repeats 3] [--small-steps 4]
                                     [--fixed-malloc-repeats 2]

`--nanogpt` is a checkout of https://github.com/karpathy/nanoGPT (model.py, train.py, configurator.py). It is never
modified or copied into the project: each run copies those three files into a temporary folder, writes
data/<name>/{train,val}.bin and meta.pkl there from genscale's tokenized Shakespeare (the uint16 token ids of
the preset gpt-char-shakespeare, so both sides train on identical tokens with an identical vocabulary) and runs
its train.py as a subprocess with --key=value overrides. genscale runs `pipeline.train` in a subprocess of this
script (`--worker`), with GENSCALE_RUNS in a temporary folder. The two alternate, one at a time, with the same
thread count (OMP_NUM_THREADS and MKL_NUM_THREADS; torch.set_num_threads in the worker).

What each tokens/s includes ("steady"): the time between the starts of consecutive steps, so each side's own loop
(learning-rate setting, batch fetch, logging, progress) is inside. Left out on both sides: the first step
(nanoGPT: its step-0 evaluation and first-call warm-up; genscale: the FLOP-counted eager step) and the last
(nanoGPT: the final evaluation and checkpoint; genscale: the final checkpoint). genscale's per-step start times
come from wrapping `GptRecipe.step` with a clock read (nothing else changes). Also recorded: genscale's
`train_seconds` from summary.json (the whole loop as users get it, first step and checkpoint included).
A repeat's tokens/s is that of its median timed step; the mean step, which the host's stalls inflate, is recorded too.
Minor page faults of each process are recorded: they explain the mini's gap (see benchmarks/README.md), and
`--fixed-malloc-repeats` repeats the mini with glibc's heap trimming fixed in both processes to show it.

FLOPs per step are genscale's counted number for both sides, since the models are the same: summary.json's `flops`
/ steps (the loop counts its first step under torch's FlopCounterMode), checked against `gpt_flops_per_step` when
asked (`check_flops`; it costs one more forward and backward, ~45 s for the small model, so only the mini checks);
achieved FLOP/s is divided by this machine's measured fp32 matmul rate (torch.mm of large square matrices).
nanoGPT's printed "mfu" is its 6N + 12LHQT estimate against an A100's bf16 peak (312 TFLOP/s): recorded, not
comparable. Final losses (same steps, data and schedule, different init and batch order) are a sanity check that
both trained the same thing: nanoGPT's own end-of-run estimate and the same estimate computed for genscale's model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import command, machine

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "gpt-char-shakespeare"  # the shipped preset
NANOGPT_FILES = ("model.py", "train.py", "configurator.py")
NANOGPT_DATASET = "genscale_shakespeare_char"
# glibc returns freed heap memory to the OS once the heap's top exceeds the trim threshold, and both thresholds
# adapt to what a process freed earlier; fixed values take each process's history out of the comparison
FIXED_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}
ITER_LINE = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms, mfu (-?[\d.]+)%", re.M)
EVAL_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", re.M)


# ---------------------------------------------------------------------------------------------------------- machine
def matmul_rate(n: int, *, repeats: int) -> dict:
    """fp32 torch.mm of two n x n matrices, `repeats` times after one warm-up: GFLOP/s (2 n^3 per product)."""
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.mm(a, b, out=c)  # warm-up: thread pool, MKL's buffers
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=c)
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return {"n": n, "repeats": repeats, "gflops": [round(r, 2) for r in rates],
            "best_gflops": round(max(rates), 2), "median_gflops": round(statistics.median(rates), 2)}


def matmul_peak(*, sizes: tuple[int, int] = (2048, 4096), repeats: tuple[int, int] = (12, 5)) -> dict:
    """The machine's fp32 matmul rate. The peak is the best product of any size: on this shared VM a product slows
    whenever the host takes a core away, so the median says how often that happens, the best what the cores do."""
    per_size = [matmul_rate(n, repeats=r) for n, r in zip(sizes, repeats, strict=True)]
    return {"sizes": per_size, "peak_gflops": max(r["best_gflops"] for r in per_size),
            "median_gflops": max(r["median_gflops"] for r in per_size)}


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine from /proc/stat, CPU seconds of this process and its children)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    ours = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))
    return busy, ours


def run_child(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, int]:
    """Run `cmd` to the end: (its result, wall seconds, its minor page faults)."""
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt  # children's counts arrive when they are reaped
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return done, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - faults


# ------------------------------------------------------------------------------------------------------- nanoGPT side
def nanogpt_identity(nanogpt: Path, commit: str | None) -> dict:
    """The commit (given, or read with git if `nanogpt` is a clone) and the sha256 of the files that run."""
    if commit is None and (nanogpt / ".git").exists():
        done = subprocess.run(["git", "-C", str(nanogpt), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = done.stdout.strip() or None
    return {"commit": commit, "sha256": {f: hashlib.sha256((nanogpt / f).read_bytes()).hexdigest()
                                         for f in NANOGPT_FILES}}


def nanogpt_copy(nanogpt: Path, dest: Path, *, train: np.ndarray, val: np.ndarray, vocab_size: int) -> Path:
    """Copy nanoGPT's three files into `dest` and write its data folder there: train.bin and val.bin (uint16 ids,
    the format genscale's shards already have) and meta.pkl with the vocabulary size."""
    missing = [f for f in NANOGPT_FILES if not (nanogpt / f).is_file()]
    if missing:
        sys.exit(f"--nanogpt {nanogpt}: not a nanoGPT checkout (no {', '.join(missing)})")
    if vocab_size > 65536:
        sys.exit(f"vocab_size {vocab_size}: does not fit nanoGPT's uint16 token files")
    dest.mkdir(parents=True)
    for f in NANOGPT_FILES:
        shutil.copy2(nanogpt / f, dest / f)
    data = dest / "data" / NANOGPT_DATASET
    data.mkdir(parents=True)
    np.asarray(train, dtype=np.uint16).tofile(data / "train.bin")
    np.asarray(val, dtype=np.uint16).tofile(data / "val.bin")
    (data / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": vocab_size}))
    return dest


def nanogpt_overrides(shape: dict, *, steps: int, eval_iters: int, out_dir: Path) -> list[str]:
    """train.py's --key=value overrides for `shape` (our model and schedule): fp32 on the CPU, no compile, one
    evaluation at step 0 and one after the last step, no checkpoint but the one its final evaluation writes."""
    values = {"device": "cpu", "compile": False, "dtype": "float32", "dataset": NANOGPT_DATASET,
              "n_layer": shape["n_layer"], "n_head": shape["n_head"], "n_embd": shape["n_embd"],
              "block_size": shape["block_size"], "bias": shape["bias"], "dropout": float(shape["dropout"]),
              "batch_size": shape["batch_size"], "gradient_accumulation_steps": shape["grad_accum"],
              "learning_rate": float(shape["lr"]), "min_lr": float(shape["min_lr"]),
              "warmup_iters": shape["warmup_steps"], "lr_decay_iters": steps, "max_iters": steps,
              "beta1": float(shape["betas"][0]), "beta2": float(shape["betas"][1]),
              "weight_decay": float(shape["weight_decay"]), "grad_clip": float(shape["grad_clip"]),
              "eval_interval": steps, "eval_iters": eval_iters, "log_interval": 1,
              "always_save_checkpoint": False, "wandb_log": False, "out_dir": str(out_dir)}
    return [f"--{k}={v}" for k, v in values.items()]


def parse_nanogpt(stdout: str, *, steps: int) -> dict:
    """Per-iteration (loss, ms, mfu) lines and the final evaluation of train.py's output."""
    iters = {int(m[1]): (float(m[2]), float(m[3]), float(m[4])) for m in ITER_LINE.finditer(stdout)}
    evals = {int(m[1]): (float(m[2]), float(m[3])) for m in EVAL_LINE.finditer(stdout)}
    if sorted(iters) != list(range(steps + 1)) or steps not in evals:
        sys.exit(f"nanoGPT's output lacks iterations or its final evaluation:\n{stdout[-3000:]}")
    return {"iters": iters, "final_eval": evals[steps]}


def run_nanogpt(copy: Path, shape: dict, *, steps: int, eval_iters: int, env: dict[str, str]) -> dict:
    """One run of nanoGPT's train.py in its temporary copy; times of iterations 1..steps-1 (see module doc)."""
    out_dir = Path(tempfile.mkdtemp(prefix="nanogpt-out-"))
    overrides = nanogpt_overrides(shape, steps=steps, eval_iters=eval_iters, out_dir=out_dir)
    done, wall, faults = run_child([sys.executable, "train.py", *overrides], cwd=copy, env=env)
    shutil.rmtree(out_dir, ignore_errors=True)
    if done.returncode != 0:
        sys.exit(f"nanoGPT's train.py failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    parsed = parse_nanogpt(done.stdout, steps=steps)
    # train.py runs iterations 0..steps; iteration k's printed loss is the batch loss before update k+1
    step_ms = [parsed["iters"][k][1] for k in range(1, steps)]
    losses = [parsed["iters"][k][0] for k in range(steps)]  # before updates 1..steps, as genscale logs them
    return {"step_ms": step_ms, "losses": losses, "printed_mfu_percent": parsed["iters"][steps - 1][2],
            "final_eval": {"train_loss": parsed["final_eval"][0], "val_loss": parsed["final_eval"][1]},
            "process_seconds": wall, "minor_page_faults": faults,
            "stderr_warnings": sorted({line.strip() for line in done.stderr.splitlines() if "Warning" in line})}


# ------------------------------------------------------------------------------------------------------ genscale side
@torch.no_grad()
def estimate_loss(model: torch.nn.Module, tokens: np.ndarray, *, block_size: int, batch_size: int, iters: int,
                  generator: torch.Generator) -> float:
    """Mean cross-entropy of `iters` batches of random windows of `tokens`: the estimate nanoGPT prints at the end
    of its run (its estimate_loss), so the two final losses are measured alike."""
    model.eval()
    window = np.arange(block_size + 1)
    losses = []
    for _ in range(iters):
        starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator).numpy()
        batch = torch.from_numpy(tokens[starts[:, None] + window].astype(np.int64))  # (B, T+1)
        losses.append(model(batch[:, :-1], batch[:, 1:])[1].item())
    return float(np.mean(losses))


def genscale_worker(spec_path: Path) -> None:
    """In a fresh process: train with genscale's pipeline, stamping the start of every step, then estimate the final
    train and val losses as nanoGPT does. Writes its result beside the spec."""
    from genscale import pipeline
    from genscale.train import gpt

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    cfg = pipeline.config_for_train(CONFIG, spec["overrides"])
    starts: list[float] = []
    faults: list[int] = []
    values: list[torch.Tensor] = []
    recipe_step = gpt.GptRecipe.step

    def stamped_step(self, step, autocast, *, eager=False):  # a clock read, then the recipe's own step
        starts.append(time.perf_counter())
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        out = recipe_step(self, step, autocast, eager=eager)
        values.append(out)
        return out

    gpt.GptRecipe.step = stamped_step
    run_dir = pipeline.train(cfg, run_dir=Path(spec["run_dir"]))
    summary = json.loads((run_dir / "summary.json").read_text())
    model = pipeline.load_sampler(run_dir, cfg, torch.device("cpu"))[0].model
    data = pipeline.load_data(cfg, run_dir)
    generator = torch.Generator().manual_seed(0)
    shape = {"block_size": cfg.model.block_size, "batch_size": cfg.train.batch_size, "iters": spec["eval_iters"],
             "generator": generator}
    steps = cfg.train.steps
    result = {"step_ms": [(starts[k + 1] - starts[k]) * 1e3 for k in range(1, steps - 1)],
              "faults_per_step": statistics.median(faults[k + 1] - faults[k] for k in range(1, steps - 1)),
              "losses": [v[0].item() for v in values], "summary": summary, "threads": torch.get_num_threads(),
              "train_tokens_sha256": hashlib.sha256(np.ascontiguousarray(data.train).tobytes()).hexdigest(),
              "final_eval": {"train_loss": estimate_loss(model, data.train, **shape),
                             "val_loss": estimate_loss(model, data.val, **shape)}}
    (spec_path.parent / "result.json").write_text(json.dumps(result))


def run_genscale(overrides: list[str], *, eval_iters: int, env: dict[str, str], threads: int) -> dict:
    """One genscale training run in a subprocess of this script, its runs and MLflow store in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="genscale-bench-gpt-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"overrides": overrides, "eval_iters": eval_iters, "threads": threads,
                                    "run_dir": str(Path(tmp) / "runs" / "run")}))
        done, wall, faults = run_child([sys.executable, __file__, "--worker", str(spec)], cwd=ROOT,
                                       env={**env, "GENSCALE_RUNS": str(Path(tmp) / "runs")})
        if done.returncode != 0:
            sys.exit(f"genscale training failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        result = json.loads((Path(tmp) / "result.json").read_text())
    return {**result, "process_seconds": wall, "minor_page_faults": faults}


# ------------------------------------------------------------------------------------------------------- comparison
def tokens_per_s(step_ms: list[float], tokens_per_step: int, *, median: bool = True) -> float:
    """Tokens per second of the median step (robust to the host's stalls), or of the mean step (total time)."""
    ms = statistics.median(step_ms) if median else statistics.fmean(step_ms)
    return tokens_per_step / (ms / 1e3)


def compare(*, nanogpt: Path, overrides: list[str], steps: int, repeats: int, eval_iters: int, threads: int,
            check_flops: bool, extra_env: dict[str, str] | None = None) -> dict:
    """`repeats` alternating rounds of both sides on the config with `overrides`; per-repeat and median numbers.
    `extra_env` is set for both sides' processes (the glibc malloc check)."""
    from genscale import pipeline
    from genscale.models.gpt import gpt_preset
    from genscale.train.gpt import gpt_flops_per_step

    overrides = [f"train.steps={steps}", "eval.on_train_end=false", "train.device=cpu", *overrides]
    cfg = pipeline.config_for_train(CONFIG, overrides)
    m, t = cfg.model, cfg.train
    data = pipeline.load_data(cfg)
    vocab = data.tokenizer.vocab_size
    shape = {**gpt_preset(m.size), "block_size": m.block_size, "bias": m.bias, "dropout": m.dropout,
             "batch_size": t.batch_size, "grad_accum": t.grad_accum, "lr": t.lr, "min_lr": t.lr * t.min_lr_ratio,
             "warmup_steps": t.warmup_steps, "betas": list(t.betas), "weight_decay": t.weight_decay,
             "grad_clip": t.grad_clip}
    if steps == t.warmup_steps:  # its get_lr would divide by lr_decay_iters - warmup_iters = 0 at the last iteration
        sys.exit(f"--steps {steps} equals train.warmup_steps: nanoGPT's get_lr divides by zero then; pick another")
    tokens_per_step = t.grad_accum * t.batch_size * m.block_size
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **(extra_env or {})}
    ours, theirs = [], []
    with tempfile.TemporaryDirectory(prefix="nanogpt-copy-") as tmp:
        copy = nanogpt_copy(nanogpt, Path(tmp) / "nanogpt", train=data.train, val=data.val, vocab_size=vocab)
        for r in range(repeats):  # alternate which side goes first, so drift hits both alike
            for side in (("genscale", "nanogpt") if r % 2 == 0 else ("nanogpt", "genscale")):
                if side == "genscale":
                    ours.append(run_genscale(overrides, eval_iters=eval_iters, env=env, threads=threads))
                else:
                    theirs.append(run_nanogpt(copy, shape, steps=steps, eval_iters=eval_iters, env=env))
            print(f"repeat {r}: genscale {tokens_per_s(ours[-1]['step_ms'], tokens_per_step):,.0f} tokens/s, "
                  f"nanoGPT {tokens_per_s(theirs[-1]['step_ms'], tokens_per_step):,.0f} tokens/s", flush=True)
    counted = {o["summary"]["flops"] // steps for o in ours}
    if len(counted) != 1:
        sys.exit(f"genscale's runs counted different FLOPs per step: {sorted(counted)}")
    flops_per_step = counted.pop()
    if check_flops and gpt_flops_per_step(cfg, vocab) != flops_per_step:
        sys.exit(f"summary.json's {flops_per_step} FLOPs per step differ from gpt_flops_per_step's")
    train_sha = hashlib.sha256(np.ascontiguousarray(data.train).tobytes()).hexdigest()
    if any(o["train_tokens_sha256"] != train_sha for o in ours):
        sys.exit("genscale trained on other tokens than the ones written for nanoGPT")
    tps_ours = [tokens_per_s(o["step_ms"], tokens_per_step) for o in ours]
    tps_theirs = [tokens_per_s(n["step_ms"], tokens_per_step) for n in theirs]
    tps_user = [steps * tokens_per_step / o["summary"]["train_seconds"] for o in ours]
    mean_ours = [tokens_per_s(o["step_ms"], tokens_per_step, median=False) for o in ours]
    mean_theirs = [tokens_per_s(n["step_ms"], tokens_per_step, median=False) for n in theirs]
    ratios = [a / b for a, b in zip(tps_ours, tps_theirs, strict=True)]
    window = min(t.log_every, steps)  # the last logged window of training losses, the same steps on both sides

    def achieved_gflops(tps: list[float]) -> float:
        return round(flops_per_step * statistics.median(tps) / tokens_per_step / 1e9, 2)

    return {
        "config": CONFIG, "genscale_overrides": overrides, "steps": steps, "repeats": repeats,
        "model": {**gpt_preset(m.size), "size": m.size, "block_size": m.block_size, "vocab_size": vocab,
                  "bias": m.bias, "dropout": m.dropout, "params": ours[0]["summary"]["params"]},
        "batch_size": t.batch_size, "grad_accum": t.grad_accum, "tokens_per_step": tokens_per_step,
        "schedule": {k: shape[k] for k in ("lr", "min_lr", "warmup_steps", "betas", "weight_decay", "grad_clip")},
        "train_tokens": len(data.train), "val_tokens": len(data.val), "train_tokens_sha256": train_sha,
        "nanogpt_overrides": nanogpt_overrides(shape, steps=steps, eval_iters=eval_iters, out_dir=Path("<tmp>")),
        "threads": threads, "genscale_worker_threads": ours[0]["threads"], "extra_env": extra_env or {},
        "timed_updates": {"genscale": f"intervals between step starts: updates 2..{steps - 1} of {steps}",
                          "nanogpt": f"printed times of iterations 1..{steps - 1}: updates 2..{steps} of {steps + 1}"},
        "tokens_per_s": {"genscale": [round(x) for x in tps_ours], "nanogpt": [round(x) for x in tps_theirs]},
        "tokens_per_s_of_mean_step": {"genscale": [round(x) for x in mean_ours],
                                      "nanogpt": [round(x) for x in mean_theirs]},
        "ratio_of_mean_steps_per_repeat": [round(a / b, 4) for a, b in zip(mean_ours, mean_theirs, strict=True)],
        "ms_per_step_median": {"genscale": [round(statistics.median(o["step_ms"]), 2) for o in ours],
                               "nanogpt": [round(statistics.median(n["step_ms"]), 2) for n in theirs]},
        "ratio_genscale_over_nanogpt_per_repeat": [round(x, 4) for x in ratios],
        "ratio_median": round(statistics.median(ratios), 4),
        "ratio_of_medians": round(statistics.median(tps_ours) / statistics.median(tps_theirs), 4),
        "genscale_user_loop_tokens_per_s": [round(x) for x in tps_user],
        "genscale_train_seconds": [round(o["summary"]["train_seconds"], 2) for o in ours],
        "process_seconds": {"genscale": [round(o["process_seconds"], 1) for o in ours],
                            "nanogpt": [round(n["process_seconds"], 1) for n in theirs]},
        "minor_page_faults_per_process": {"genscale": [o["minor_page_faults"] for o in ours],
                                          "nanogpt": [n["minor_page_faults"] for n in theirs]},
        "genscale_median_page_faults_per_step": [o["faults_per_step"] for o in ours],
        "flops_per_step": flops_per_step, "flops_per_step_source": "genscale's summary.json flops / steps",
        "flops_per_step_equals_gpt_flops_per_step": True if check_flops else "not checked",
        "achieved_gflops": {"genscale": achieved_gflops(tps_ours), "nanogpt": achieved_gflops(tps_theirs),
                            "genscale_user_loop": achieved_gflops(tps_user)},
        "nanogpt_printed_mfu_percent": [n["printed_mfu_percent"] for n in theirs],
        "final_losses": {
            "eval_iters": eval_iters,
            "genscale_estimate": [o["final_eval"] for o in ours],
            "nanogpt_estimate": [n["final_eval"] for n in theirs],
            f"genscale_train_loss_last_{window}_steps": [round(float(np.mean(o["losses"][-window:])), 4) for o in ours],
            f"nanogpt_train_loss_last_{window}_steps": [round(float(np.mean(n["losses"][-window:])), 4)
                                                         for n in theirs]},
        "nanogpt_stderr_warnings": theirs[0]["stderr_warnings"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (model.py, train.py, configurator.py)")
    ap.add_argument("--nanogpt-commit", help="its commit, when the folder is not a git clone")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--small-steps", type=int, default=0, help="also the 'small' baby GPT (6/6/384, block 256, "
                    "batch 64) for this many steps; 0: skip")
    ap.add_argument("--small-repeats", type=int, default=1)
    ap.add_argument("--fixed-malloc-repeats", type=int, default=0, help="also the mini with glibc's heap trimming "
                    "and mmap threshold fixed in both processes (MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_), "
                    "this many rounds; 0: skip")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpt_nanogpt.json"))
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        genscale_worker(args.worker)
        return
    if args.nanogpt is None:
        sys.exit("--nanogpt DIR is required (git clone https://github.com/karpathy/nanoGPT)")
    torch.set_num_threads(args.threads)
    started, (busy0, ours0) = time.perf_counter(), cpu_seconds()
    peak_before = matmul_peak()
    print(f"matmul: best {peak_before['peak_gflops']}, median {peak_before['median_gflops']} GFLOP/s", flush=True)
    common = {"nanogpt": args.nanogpt, "threads": args.threads}
    mini = compare(overrides=[], steps=args.steps, repeats=args.repeats, eval_iters=args.eval_iters, check_flops=True,
                   **common)
    small = None
    if args.small_steps:
        small = compare(overrides=["model.size=small", "model.block_size=256", "train.batch_size=64"],
                        steps=args.small_steps, repeats=args.small_repeats, eval_iters=1,
                        check_flops=False, **common)
    fixed_malloc = None
    if args.fixed_malloc_repeats:
        fixed_malloc = compare(overrides=[], steps=args.steps, repeats=args.fixed_malloc_repeats,
                               eval_iters=args.eval_iters, check_flops=False, extra_env=FIXED_MALLOC, **common)
    peak_after = matmul_peak()
    peak = max(peak_before["peak_gflops"], peak_after["peak_gflops"])
    median = max(peak_before["median_gflops"], peak_after["median_gflops"])
    for section in (mini, small, fixed_malloc):
        if section:
            section["fraction_of_matmul_peak"] = {k: round(v / peak, 4) for k, v in section["achieved_gflops"].items()}
            section["fraction_of_matmul_median"] = {k: round(v / median, 4)
                                                    for k, v in section["achieved_gflops"].items()}
    wall, (busy1, ours1) = time.perf_counter() - started, cpu_seconds()
    # other tenants of this VM (invisible to ps here) take CPU too: how many cores, on average, during the run
    others = {"cores_busy_with_other_work": round((busy1 - busy0 - (ours1 - ours0)) / wall, 2),
              "cores_busy_with_this_benchmark": round((ours1 - ours0) / wall, 2)}
    result = {"command": command(), "machine": machine(), "total_seconds": round(wall), "cpu_load": others,
              "nanogpt": nanogpt_identity(args.nanogpt, args.nanogpt_commit),
              "nanogpt_patches": [], "matmul_peak_gflops": peak, "matmul_median_gflops": median,
              "matmul_before": peak_before, "matmul_after": peak_after,
              "mini": mini, "small": small, "mini_fixed_malloc": fixed_malloc}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("mini", "small")}, indent=1))
    for name, section in (("mini", mini), ("small", small), ("mini_fixed_malloc", fixed_malloc)):
        if section:
            print(name, json.dumps({k: section[k] for k in ("tokens_per_s", "ratio_genscale_over_nanogpt_per_repeat",
                                                            "ratio_median", "achieved_gflops",
                                                            "fraction_of_matmul_peak", "final_losses")}, indent=1))


if __name__ == "__main__":
    main()
