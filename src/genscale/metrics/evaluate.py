"""Evaluate image sets against the held-out test split.

Reference features of the test split are extracted once per (extractor, dataset version, count) and
cached. Every metric is stored with the extractor that produced it, the sample counts, and (FID, KID) its
real-vs-real floor: the same metric of as many training images against the same test images.
"""

from __future__ import annotations

import io
from typing import Protocol

import numpy as np
import torch

from genscale.data.datasets import DataSplits, nested_subset
from genscale.families.image import ImageEvalConfig
from genscale.metrics.image import (
    KEY_FID,
    KEY_IS,
    KEY_KID,
    KEY_PRECISION,
    KEY_RECALL,
    feature_moments,
    fid_from_moments,
    inception_score_from_logits,
    kid_from_features,
    precision_recall,
)
from genscale.paths import atomic_write_bytes, cache_dir
from genscale.ui import progress


class FeatureExtractor(Protocol):
    name: str
    id: str  # name plus the hash of its weights
    metric_suffix: str  # appended to metric keys: "_fmnist" -> fid_fmnist

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def _metrics_of(suffix: str, logits: bool) -> dict[str, str]:
    names = {KEY_FID: "lower", KEY_KID: "lower", KEY_PRECISION: "higher", KEY_RECALL: "higher"}
    return {k + suffix: v for k, v in {**names, **({KEY_IS: "higher"} if logits else {})}.items()}


# Metric names each extractor produces, with their direction (the inception extractor has no class logits: no IS).
GENERATE_BATCH = 500  # latents drawn and generated at a time by generate_images (the noise depends on it)
EXTRACTOR_METRICS = {"fmnist-classifier": _metrics_of("_fmnist", logits=True), "inception": _metrics_of("", False)}


def make_extractor(splits: DataSplits, cfg: ImageEvalConfig, device: torch.device) -> FeatureExtractor:
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
    """Features of a class-balanced subset of n images of the test (or val, or full_train) split (nested across n),
    cached."""
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


def metrics_from_features(feats: np.ndarray, logits: np.ndarray | None, ref: np.ndarray, cfg: ImageEvalConfig,
                          suffix: str) -> dict[str, float]:
    """FID, KID (+ its std), improved precision/recall (k = eval.pr_k) and IS (with logits) of features vs ref."""
    kid, kid_std = kid_from_features(feats, ref, subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size)
    precision, recall = precision_recall(ref, feats, k=min(cfg.pr_k, len(ref) - 1, len(feats) - 1))
    out = {KEY_FID + suffix: fid_from_moments(*feature_moments(feats), *feature_moments(ref)),
           KEY_KID + suffix: kid, KEY_KID + suffix + "_std": kid_std,
           KEY_PRECISION + suffix: precision, KEY_RECALL + suffix: recall}
    if logits is not None:
        out[KEY_IS + suffix] = inception_score_from_logits(logits)
    return out


def real_floor(extractor: FeatureExtractor, splits: DataSplits, cfg: ImageEvalConfig) -> dict[str, dict]:
    """FID and KID of real images: min(eval.n_samples, train size) training images (a nested subset, features
    cached) against the same test images the generated samples meet. No model scores below it on average at these
    counts, so it is the floor a gate (max_over_floor) and a scaling law's irreducible term stand on."""
    n_ref = min(cfg.n_samples, len(splits.test))
    n = min(cfg.n_samples, len(splits.full_train))
    ref = reference_features(extractor, splits, n_ref, cfg.batch_size)
    reals = reference_features(extractor, splits, n, cfg.batch_size, split="full_train")
    how = f"real-vs-real: {n} training images vs {n_ref} test images ({extractor.id})"
    fid = fid_from_moments(*feature_moments(reals), *feature_moments(ref))
    kid, _ = kid_from_features(reals, ref, subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size)
    s = extractor.metric_suffix  # only the metrics that carry a floor: precision/recall of reals would be thrown away
    return {KEY_FID + s: {"value": fid, "how": how}, KEY_KID + s: {"value": kid, "how": how}}


def evaluate_images(images: torch.Tensor, splits: DataSplits, extractor: FeatureExtractor, cfg: ImageEvalConfig,
                    label: str = "generated") -> dict[str, dict]:
    """FID, KID, precision/recall (and IS when the extractor has logits) of uint8 images (N, C, H, W) vs the test
    split; FID and KID carry their real-vs-real floor (real_floor)."""
    n_ref = min(cfg.n_samples, len(splits.test))
    ref = reference_features(extractor, splits, n_ref, cfg.batch_size)
    feats, logits = extract(extractor, images, cfg.batch_size, f"{label} ({len(images)})")
    s = extractor.metric_suffix
    values = metrics_from_features(feats, logits, ref, cfg, s)
    floors = real_floor(extractor, splits, cfg)
    common = {"extractor": extractor.id, "n_gen": len(images), "n_ref": n_ref}
    out = {name: {"value": values[name], **common} for name in EXTRACTOR_METRICS[cfg.extractor]}
    out[KEY_KID + s]["std"] = values[KEY_KID + s + "_std"]
    for name, floor in floors.items():
        out[name]["floor"] = floor["value"]
    return out


@torch.no_grad()
def generate_images(g: torch.nn.Module, n: int, *, z_dim: int, seed: int, device: torch.device,
                    batch_size: int = GENERATE_BATCH, z: torch.Tensor | None = None) -> torch.Tensor:
    """n samples as uint8 (N, C, H, W), quantised as a saved PNG would be; seeded, so repeatable. `z` (n, z_dim):
    these latents instead of the seed's."""
    g.eval()
    gen = torch.Generator(device).manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        x = g(torch.randn(b, z_dim, generator=gen, device=device) if z is None else z[i:i + b])
        out.append(((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu())
    return torch.cat(out)
