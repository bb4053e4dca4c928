"""FID-fmnist of the generator's EMA with the warm-up rule vs the old constant-decay rule, at several run lengths.

One training run of the config (the same seed, data and generator trajectory for both rules): every step updates
two EMAs of the same generator, genscale's (`make_ema`: decay min(ema_decay, (1 + n) / (10 + n)) at update n)
and the rule before it (torch's `get_ema_multi_avg_fn(ema_decay)`: a constant decay from the first update). At
each listed step both EMAs and the raw generator are scored with the config's extractor on the same noise.

    python benchmarks/ema_warmup.py [--config dcgan-fmnist] [--steps 500,1000,2000] [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _machine import command, machine
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from genscale.config import load_config
from genscale.metrics.evaluate import evaluate_images, generate_images, make_extractor
from genscale.pipeline import load_data
from genscale.train.gan import GanRecipe
from genscale.train.machinery import autocast_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="dcgan-fmnist", help="run config YAML or preset name")
    ap.add_argument("--steps", default="500,1000,2000", help="comma-separated steps at which to score")
    ap.add_argument("--n", type=int, default=10000, help="generated samples per score")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override, as the CLI's")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ema_warmup.json"))
    args = ap.parse_args()
    points = sorted(int(s) for s in args.steps.split(","))
    cfg = load_config(args.config, [*args.overrides, f"train.steps={points[-1]}", f"eval.n_samples={args.n}",
                                    "train.device=cpu"])
    device = torch.device("cpu")
    data = load_data(cfg)
    extractor = make_extractor(data, cfg.eval, device)
    recipe = GanRecipe(cfg, data, device)  # its EMA is genscale's (warm-up)
    old = AveragedModel(recipe.run.g, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True)
    autocast = autocast_for(device, "fp32")
    rows, started = [], time.perf_counter()

    def score(g: torch.nn.Module) -> float:
        images = generate_images(g, args.n, z_dim=cfg.model.z_dim, seed=cfg.train.seed + 1, device=device)
        metric = f"fid{extractor.metric_suffix}"
        return round(evaluate_images(images, data, extractor, cfg.eval)[metric]["value"], 3)

    for step in range(points[-1]):
        recipe.step(step, autocast)
        old.update_parameters(recipe.run.g)
        if step + 1 in points:
            train_s = time.perf_counter() - started
            row = {"step": step + 1, "warmup_ema": score(recipe.run.ema.module), "constant_ema": score(old.module),
                   "raw_generator": score(recipe.run.g), "train_seconds_so_far": round(train_s, 1)}
            recipe.run.g.train()
            rows.append(row)
            print(json.dumps(row))
            started = time.perf_counter() - train_s  # scoring time is not training time
    result = {"command": command(), "machine": machine(), "config": args.config, "overrides": args.overrides,
              "model": f"{cfg.model.arch}/{cfg.model.size}", "data_size": len(data.train),
              "ema_decay": cfg.train.ema_decay, "seed": cfg.train.seed, "extractor": extractor.id,
              "n_generated": args.n, "metric": f"fid{extractor.metric_suffix}",
              "rule": "warmup_ema: decay_n = min(ema_decay, (1 + n) / (10 + n)); constant_ema: decay_n = ema_decay",
              "points": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
