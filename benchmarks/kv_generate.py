"""Greedy generation speed of genscale's GPT (key/value cache) against Hugging Face transformers' GPT-2 with its cache.

    python benchmarks/kv_generate.py [--presets mini small] [--batches 1 8] [--threads 1 2] [--repeats 5]
                                     [--uncached-repeats 3] [--prompt 16] [--new-tokens 200]

Models: genscale GPTs of the named presets, vocabulary 65 (character-level Shakespeare), block_size 256, bias=False,
random init (seed 0; speed does not depend on the weights). Each is converted with `gpt2_config` and
`gpt2_state_dict` into a transformers GPT2LMHeadModel, and before anything is timed the script asserts that the two
give equal logits (atol 1e-4) on the prompt and the same greedy continuation of --new-tokens tokens.

Contestants, all greedy, fp32 on the CPU, in this one process:
  genscale     GPT.generate(prompt, N, temperature=0): the cached path
  transformers GPT2LMHeadModel.generate(prompt, attention_mask=ones, max_new_tokens=N, do_sample=False,
               use_cache=True, pad_token_id=0); the explicit all-ones mask matters: without it transformers masks out
               every prompt token equal to pad_token_id (any id of this vocabulary), a different computation
  uncached     the loop GPT.generate ran before the cache: crop, full forward of the context, last logits, per token
Per (threads, preset, batch): one short warm-up call of each, then repeats interleaved, the order rotated each repeat
(the uncached loop only in the first --uncached-repeats, it is slow). tokens/s = batch * N / wall time of the call.
The ratio is median genscale / median transformers (goal >= 1.0); per-repeat ratios pair the two calls of a repeat.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from _machine import command, machine, write_result
from transformers import GPT2Config, GPT2LMHeadModel

from genscale.models.gpt import GPT, build_gpt, gpt2_config, gpt2_state_dict

VOCAB, BLOCK = 65, 256
CONTESTANTS = ("genscale", "transformers", "uncached")


def build_pair(preset: str) -> tuple[GPT, GPT2LMHeadModel]:
    """A random genscale GPT in eval mode and the GPT2LMHeadModel with its weights."""
    torch.manual_seed(0)
    model = build_gpt(preset, vocab_size=VOCAB, block_size=BLOCK, dropout=0.0, bias=False).eval()
    hf = GPT2LMHeadModel(GPT2Config(**gpt2_config(model.config))).eval()
    hf.load_state_dict(gpt2_state_dict(model), strict=True)
    return model, hf


@torch.no_grad()
def uncached_generate(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """GPT.generate as it was before the cache (greedy): every token recomputes the whole cropped context."""
    for _ in range(max_new_tokens):
        context = idx[:, -model.config.block_size:]
        logits = model.lm_head(model._hidden(context)[:, -1])  # (B, V)
        idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return idx


def generators(model: GPT, hf: GPT2LMHeadModel) -> dict[str, Callable[[torch.Tensor, int], torch.Tensor]]:
    return {"genscale": lambda idx, n: model.generate(idx, n, temperature=0),
            "transformers": lambda idx, n: hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n,
                                                       do_sample=False, use_cache=True, pad_token_id=0),
            "uncached": lambda idx, n: uncached_generate(model, idx, n)}


def check_equal(model: GPT, hf: GPT2LMHeadModel, prompt: torch.Tensor, new_tokens: int) -> dict:
    """Assert equal logits on the prompt and equal greedy continuations (cached genscale, transformers, uncached)."""
    with torch.no_grad():
        ours, theirs = model(prompt)[0], hf(prompt).logits  # (B, T, V)
    max_diff = (ours - theirs).abs().max().item()
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), f"logits differ by up to {max_diff}"
    runs = {name: gen(prompt, new_tokens) for name, gen in generators(model, hf).items()}
    for name, out in runs.items():
        assert out.shape == (prompt.shape[0], prompt.shape[1] + new_tokens), f"{name}: shape {tuple(out.shape)}"
        differ = (out != runs["genscale"]).any(dim=0).nonzero()
        assert differ.numel() == 0, f"{name}'s greedy continuation first differs at position {differ[0].item()}"
    return {"max_abs_logit_diff": max_diff, "greedy_equal_tokens": new_tokens, "batch": prompt.shape[0]}


def time_cell(model: GPT, hf: GPT2LMHeadModel, *, batch: int, args: argparse.Namespace) -> dict:
    """Interleaved repeats of each contestant for one (preset, batch) at the current thread count: tokens/s."""
    prompt = torch.randint(VOCAB, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
    gens = generators(model, hf)
    for gen in gens.values():  # warm-up: thread pools, allocator, transformers' first-call set-up
        gen(prompt, 20)
    rates: dict[str, list[float]] = {name: [] for name in CONTESTANTS}
    for r in range(args.repeats):
        order = CONTESTANTS[r % 3:] + CONTESTANTS[:r % 3]
        for name in order:
            if name == "uncached" and r >= args.uncached_repeats:
                continue
            start = time.perf_counter()
            gens[name](prompt, args.new_tokens)
            rates[name].append(batch * args.new_tokens / (time.perf_counter() - start))
    medians = {name: statistics.median(v) for name, v in rates.items() if v}
    pairs = [a / b for a, b in zip(rates["genscale"], rates["transformers"], strict=True)]
    return {"batch": batch, "tokens_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
            "median_tokens_per_s": {k: round(v, 1) for k, v in medians.items()},
            "ratio_genscale_over_transformers": round(medians["genscale"] / medians["transformers"], 3),
            "per_repeat_ratios": [round(x, 3) for x in pairs],
            "cache_speedup_over_uncached": round(medians["genscale"] / medians["uncached"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["mini", "small"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--uncached-repeats", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "kv_generate.json"))
    args = ap.parse_args()

    pairs = {preset: build_pair(preset) for preset in args.presets}
    checks = {}
    for preset, (model, hf) in pairs.items():  # 1. same model on both sides, or nothing is timed
        prompt = torch.randint(VOCAB, (max(args.batches), args.prompt), generator=torch.Generator().manual_seed(0))
        checks[preset] = check_equal(model, hf, prompt, args.new_tokens)
    cells = []
    for threads in args.threads:  # 2. time
        torch.set_num_threads(threads)
        for preset, (model, hf) in pairs.items():
            for batch in args.batches:
                cell = {"threads": threads, "preset": preset, **time_cell(model, hf, batch=batch, args=args)}
                cells.append(cell)
                m = cell["median_tokens_per_s"]
                print(f"threads {threads}  {preset:5}  batch {batch}:  genscale {m['genscale']:8.1f}  transformers "
                      f"{m['transformers']:8.1f}  uncached {m['uncached']:7.1f} tokens/s  ratio "
                      f"{cell['ratio_genscale_over_transformers']:.3f} {cell['per_repeat_ratios']}  cache speed-up "
                      f"{cell['cache_speedup_over_uncached']:.1f}x", flush=True)
    result = {"command": command(),
              "machine": {**machine(), "platform": platform.platform(), "transformers": transformers.__version__,
                          "transformers_attention": next(iter(pairs.values()))[1].config._attn_implementation},
              "settings": {"vocab_size": VOCAB, "block_size": BLOCK, "weights": "random init, seed 0",
                           "prompt_tokens": args.prompt, "new_tokens": args.new_tokens, "repeats": args.repeats,
                           "uncached_repeats": args.uncached_repeats, "dtype": "float32", "decoding": "greedy"},
              "equivalence": checks, "cells": cells}
    write_result(args.out, result)
    print("\n| threads | preset | batch | genscale tokens/s | transformers tokens/s | ratio | uncached tokens/s |"
          " cache speed-up |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for c in cells:
        m = c["median_tokens_per_s"]
        print(f"| {c['threads']} | {c['preset']} | {c['batch']} | {m['genscale']:,.0f} | {m['transformers']:,.0f} | "
              f"{c['ratio_genscale_over_transformers']:.3f} | {m['uncached']:,.0f} | "
              f"{c['cache_speedup_over_uncached']:.1f}x |")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
