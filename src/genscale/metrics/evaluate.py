"""Evaluate image sets and generators against the held-out test split.

Reference features of the test split are extracted once per (extractor, dataset version, count) and
cached. Every metric is stored with the extractor that produced it and the sample counts.
"""

from __future__ import annotations

import io
from typing import Protocol

import numpy as np
import torch

from genscale.config import EvalConfig, RunConfig
from genscale.data.datasets import DataSplits, nested_subset
from genscale.metrics.image import (
    KEY_FID,
    KEY_IS,
    KEY_KID,
    feature_moments,
    fid_from_moments,
    inception_score_from_logits,
    kid_from_features,
)
from genscale.metrics.text import KEY_PPL, KEY_PPL_CHAR, KEY_VAL_LOSS, KEY_VAL_LOSS_CHAR, TEXT_METRICS
from genscale.paths import atomic_write_bytes, cache_dir
from genscale.ui import progress


class FeatureExtractor(Protocol):
    name: str
    id: str  # name plus the hash of its weights
    metric_suffix: str  # appended to metric keys: "_fmnist" -> fid_fmnist

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...


# Metric names each extractor produces (the inception extractor has no class logits, hence no IS).
EXTRACTOR_METRICS = {"fmnist-classifier": (KEY_FID + "_fmnist", KEY_KID + "_fmnist", KEY_IS + "_fmnist"),
                     "inception": (KEY_FID, KEY_KID)}
# Quality metrics where lower is better: the ones a scaling law can be fitted to.
LOWER_IS_BETTER = (KEY_FID, KEY_KID, KEY_FID + "_fmnist", KEY_KID + "_fmnist", KEY_VAL_LOSS, KEY_PPL, KEY_PPL_CHAR,
                   KEY_VAL_LOSS_CHAR)


def produced_metrics(cfg: RunConfig) -> set[str]:
    """Names of the metrics a run with this config records at the end of training."""
    if cfg.model.family == "gpt":
        return set(TEXT_METRICS)
    return set(EXTRACTOR_METRICS[cfg.eval.extractor])


def make_extractor(splits: DataSplits, cfg: EvalConfig, device: torch.device) -> FeatureExtractor:
    if cfg.extractor == "inception":
        from genscale.metrics.inception import InceptionExtractor

        return InceptionExtractor(device)
    from genscale.metrics.classifier import ClassifierExtractor

    return ClassifierExtractor(splits, cfg.classifier, device)


def extract(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int, label: str
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (N, D) and logits (N, K) or None, in batches, with a progress bar."""
    feats, logits = [], []
    with progress(transient=True) as bar:
        task = bar.add_task(f"{extractor.name} features: {label}", total=len(images))
        for i in range(0, len(images), batch_size):
            f, z = extractor(images[i:i + batch_size])
            feats.append(f.double().cpu())
            if z is not None:
                logits.append(z.double().cpu())
            bar.update(task, advance=len(f))
    return torch.cat(feats).numpy(), (torch.cat(logits).numpy() if logits else None)


def reference_features(extractor: FeatureExtractor, splits: DataSplits, n: int, batch_size: int,
                       split: str = "test") -> np.ndarray:
    """Features of a class-balanced subset of n images of the test (or val) split (nested across n), cached."""
    safe_id = extractor.id.replace(":", "-")
    # versions derived by clean/corrupt keep their basis's test split, so they share its cached features; a val
    # split is the version's own
    basis = splits.extractor_basis[0] if split == "test" else splits.version
    path = cache_dir() / "features" / f"{safe_id}-{basis[:16]}-{split}-{n}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    images = nested_subset(getattr(splits, split), n, seed=0).x
    feats, _ = extract(extractor, images, batch_size, f"{split} split ({n})")
    buf = io.BytesIO()
    np.save(buf, feats)
    atomic_write_bytes(path, buf.getvalue())
    return feats


def evaluate_images(images: torch.Tensor, splits: DataSplits, extractor: FeatureExtractor, cfg: EvalConfig,
                    label: str = "generated") -> dict[str, dict]:
    """FID, KID (and IS when the extractor has logits) of uint8 images (N, C, H, W) vs the test split."""
    n_ref = min(cfg.n_samples, len(splits.test))
    ref = reference_features(extractor, splits, n_ref, cfg.batch_size)
    feats, logits = extract(extractor, images, cfg.batch_size, f"{label} ({len(images)})")
    s = extractor.metric_suffix
    common = {"extractor": extractor.id, "n_gen": len(images), "n_ref": n_ref}
    kid, kid_std = kid_from_features(feats, ref, subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size)
    out = {
        KEY_FID + s: {"value": fid_from_moments(*feature_moments(feats), *feature_moments(ref)), **common},
        KEY_KID + s: {"value": kid, "std": kid_std, **common},
    }
    if logits is not None:
        out[KEY_IS + s] = {"value": inception_score_from_logits(logits), **common}
    return out


@torch.no_grad()
def generate_images(g: torch.nn.Module, n: int, *, z_dim: int, seed: int, device: torch.device,
                    batch_size: int = 500) -> torch.Tensor:
    """n samples as uint8 (N, C, H, W), quantised as a saved PNG would be; seeded, so repeatable."""
    g.eval()
    gen = torch.Generator(device).manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        x = g(torch.randn(min(batch_size, n - i), z_dim, generator=gen, device=device))
        out.append(((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu())
    return torch.cat(out)
