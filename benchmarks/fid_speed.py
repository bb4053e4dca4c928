"""FID from features: genscale vs torchmetrics' FrechetInceptionDistance on identical features, same process.

genscale's path is the one `evaluate_images` takes: `feature_moments` of both sets, then `fid_from_moments`.
torchmetrics gets the same float64 features through an identity feature module: update(real) + update(fake)
+ compute(). The two alternate which goes first. The old genscale path (np.cov moments, then
scipy.linalg.sqrtm(S1 S2), as in pytorch-fid) is reimplemented here and timed once, as the "before".

    python benchmarks/fid_speed.py [--n 10000] [--d 2048] [--repeats 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.linalg
import torch
import torchmetrics
from _machine import command, machine
from torchmetrics.image.fid import FrechetInceptionDistance

from genscale.metrics.image import feature_moments, fid_from_moments


class Identity(torch.nn.Module):
    """Feature module that returns its input, so torchmetrics computes FID on our features."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim  # read by torchmetrics instead of probing with a dummy image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def make_features(n: int, d: int, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two (n, d) float64 sets with low-rank-plus-diagonal covariances that differ in mean, factors and noise."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(rank, d)) / np.sqrt(rank)
    noise = rng.uniform(0.1, 1.0, d)  # per-dimension scale of the diagonal part
    mean = rng.uniform(0.0, 1.0, d)
    real = rng.normal(size=(n, rank)) @ factors + rng.normal(size=(n, d)) * noise + mean
    fake_factors = factors + 0.3 * rng.normal(size=(rank, d)) / np.sqrt(rank)
    fake = rng.normal(size=(n, rank)) @ fake_factors + rng.normal(size=(n, d)) * noise * 1.2 + mean + 0.05
    return real, fake


def genscale_fid(real: np.ndarray, fake: np.ndarray) -> tuple[float, float, float]:
    """FID, seconds for both moments, seconds for fid_from_moments."""
    start = time.perf_counter()
    m_real, m_fake = feature_moments(real), feature_moments(fake)
    mid = time.perf_counter()
    value = fid_from_moments(*m_real, *m_fake)
    return value, mid - start, time.perf_counter() - mid


def torchmetrics_fid(real: torch.Tensor, fake: torch.Tensor) -> tuple[float, float]:
    """FID and seconds for update(real) + update(fake) + compute(); the metric is built before the clock."""
    metric = FrechetInceptionDistance(feature=Identity(real.shape[1]))
    start = time.perf_counter()
    metric.update(real, real=True)
    metric.update(fake, real=False)
    value = metric.compute()
    seconds = time.perf_counter() - start
    assert value.dtype == torch.float64
    return float(value), seconds


def before_scipy_sqrtm_fid(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """BEFORE: genscale's previous path (np.cov moments, scipy.linalg.sqrtm of S1 S2); FID and seconds."""
    start = time.perf_counter()
    (mu1, s1), (mu2, s2) = [(f.mean(axis=0), np.cov(f, rowvar=False)) for f in (real, fake)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(s1)) * 1e-6
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))
    return value, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="samples per set")
    ap.add_argument("--d", type=int, default=2048, help="feature size (Inception pool3: 2048)")
    ap.add_argument("--rank", type=int, default=64, help="rank of the low-rank part of the covariances")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fid_speed.json"))
    args = ap.parse_args()
    real, fake = make_features(args.n, args.d, args.rank, args.seed)
    real_t, fake_t = torch.from_numpy(real), torch.from_numpy(fake)  # same memory, float64
    small = make_features(500, 128, 8, args.seed + 1)
    genscale_fid(*small)  # warm-up: BLAS/LAPACK thread pools of both libraries
    torchmetrics_fid(*(torch.from_numpy(x) for x in small))
    ours, ours_moments, ours_fid, theirs = [], [], [], []
    for r in range(args.repeats):  # alternate which goes first, so drift hits both alike
        if r % 2:
            t_value, t_s = torchmetrics_fid(real_t, fake_t)
            g_value, g_moments, g_fid = genscale_fid(real, fake)
        else:
            g_value, g_moments, g_fid = genscale_fid(real, fake)
            t_value, t_s = torchmetrics_fid(real_t, fake_t)
        ours.append(g_moments + g_fid)
        ours_moments.append(g_moments)
        ours_fid.append(g_fid)
        theirs.append(t_s)
        print(f"repeat {r}: genscale {ours[-1]:.2f} s (moments {g_moments:.2f} + fid {g_fid:.2f}), "
              f"torchmetrics {t_s:.2f} s")
    before_value, before_s = before_scipy_sqrtm_fid(real, fake)
    print(f"before (scipy sqrtm path): {before_s:.2f} s")
    result = {"command": command(), "machine": machine(),
              "libraries": {"numpy": np.__version__, "scipy": scipy.__version__,
                            "torchmetrics": torchmetrics.__version__},
              "n_per_set": args.n, "d": args.d, "covariance": f"rank-{args.rank} plus diagonal", "seed": args.seed,
              "repeats": args.repeats,
              "genscale_s": [round(x, 3) for x in ours],
              "genscale_moments_s": [round(x, 3) for x in ours_moments],
              "genscale_fid_from_moments_s": [round(x, 3) for x in ours_fid],
              "torchmetrics_s": [round(x, 3) for x in theirs],
              "genscale_median_s": round(statistics.median(ours), 3),
              "torchmetrics_median_s": round(statistics.median(theirs), 3),
              "ratio_median": round(statistics.median(ours) / statistics.median(theirs), 4),  # goal <= 0.5
              "ratio_per_repeat": [round(o / t, 4) for o, t in zip(ours, theirs, strict=True)],
              "fid_genscale": g_value, "fid_torchmetrics": t_value,
              "abs_diff": abs(g_value - t_value), "rel_diff": abs(g_value - t_value) / abs(t_value),
              "before_scipy_sqrtm": {"what": "previous genscale path, reimplemented here: np.cov + scipy.linalg.sqrtm",
                                     "seconds_once": round(before_s, 3), "fid": before_value,
                                     "rel_diff_to_torchmetrics": abs(before_value - t_value) / abs(t_value)}}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
