"""The fast domain feature extractor: a small CNN trained on the dataset's own labelled train split.

Its penultimate layer (128-d) gives "FID-fmnist"/"KID-fmnist", its logits a classifier-based
Inception-Score-style number. The trained weights are cached by dataset version and training
settings, with the test accuracy recorded beside them.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save

from genscale.data.datasets import DataSplits, nested_subset
from genscale.errors import GenscaleError
from genscale.families.image import ClassifierConfig
from genscale.paths import atomic_write_bytes, cache_dir
from genscale.ui import progress

FEATURE_DIM = 128


class DomainClassifier(torch.nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.AdaptiveAvgPool2d(7), torch.nn.Flatten())
        self.features = torch.nn.Sequential(torch.nn.Linear(64 * 7 * 7, FEATURE_DIM), torch.nn.ReLU())
        self.head = torch.nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(self.conv(x))  # (B, 128)
        return f, self.head(f)  # features, logits (B, K)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


@torch.no_grad()
def accuracy(model: DomainClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(_normalise(images[i:i + batch]))[1].argmax(1) == labels[i:i + batch]).sum())
                  for i in range(0, len(images), batch))
    return correct / len(images)


def train_classifier(splits: DataSplits, cfg: ClassifierConfig) -> tuple[DomainClassifier, float]:
    """Adam, batch 128, `cfg.epochs` epochs on the full train split (before `data.size` subsetting)."""
    train = nested_subset(splits.extractor_basis[1], cfg.train_size, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = DomainClassifier(splits.image_shape[0], splits.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(cfg.seed)
    batches = max(1, len(train) // 128)
    with progress(transient=True) as bar:
        task = bar.add_task("training fmnist-classifier", total=cfg.epochs * batches)
        for _ in range(cfg.epochs):
            model.train()
            perm = torch.randperm(len(train), generator=g)
            for b in range(batches):
                idx = perm[b * 128:(b + 1) * 128]
                loss = F.cross_entropy(model(_normalise(train.x[idx]))[1], train.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(task, advance=1)
    model.eval()
    return model, accuracy(model, splits.test.x, splits.test.y)


class ClassifierExtractor:
    """Features and logits of the cached domain classifier for uint8 images (B, C, H, W)."""

    name = "fmnist-classifier"
    metric_suffix = "_fmnist"

    def __init__(self, splits: DataSplits, cfg: ClassifierConfig, device: torch.device | str = "cpu"):
        if splits.num_classes < 2:
            raise GenscaleError(f"eval.extractor: fmnist-classifier needs labelled data; '{splits.name}' has none")
        basis = splits.extractor_basis[0]
        key = hashlib.sha256(f"{basis}:{cfg.model_dump_json()}".encode()).hexdigest()[:16]
        path = cache_dir() / "extractors" / f"fmnist-classifier-{key}.safetensors"
        model = DomainClassifier(splits.image_shape[0], splits.num_classes)
        if path.exists():
            model.load_state_dict(load_file(path))
            self.test_accuracy = json.loads(path.with_suffix(".json").read_text())["test_accuracy"]
        else:
            model, self.test_accuracy = train_classifier(splits, cfg)
            atomic_write_bytes(path.with_suffix(".json"), json.dumps(
                {"test_accuracy": self.test_accuracy, "dataset_version": basis,
                 "config": cfg.model_dump()}).encode())
            atomic_write_bytes(path, save(model.state_dict()))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.id = f"fmnist-classifier:{key}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model(_normalise(images.to(self.device)))
