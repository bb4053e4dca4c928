"""What the image families (gan, vae, ddpm) share: the image eval section, and `ImageFamily`, the Family that a
family module fills with its own pieces (config sections, recipe, sampler from a checkpoint, FLOP count).

Written once here: loading image data, FID/KID/IS with precision/recall and the sampling cost on the test split (and
the real-vs-real floor beside every FID), the FID curve of eval.every against the validation split, sample grids.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from genscale.sections import Doc, EvalBase, Int, Strict

if TYPE_CHECKING:
    import torch

    from genscale.config import RunConfig
    from genscale.data.datasets import DataSplits
    from genscale.families import ImageSampler
    from genscale.train.distributed import World
    from genscale.train.loop import Evaluation, Recipe

SAMPLE_SEED = 1234  # fixed noise for sample grids, so grids of different runs are comparable
KEY_SAMPLING_SECONDS = "sampling_seconds_per_image"  # a fact stored with every evaluation, not a quality metric


@dataclass(frozen=True)
class NetworkExport:
    """An image sampler's network as `genscale export --format torch` writes it (export.py): a module of tensors only,
    and the Python that turns a seed into what `genscale sample` gives with it, so plain torch reproduces the run."""

    name: str  # file stem: generator, decoder, unet
    module: torch.nn.Module  # tensors in, tensors out; eval mode, on the CPU
    inputs: dict[str, tuple[torch.Tensor, str]]  # argument -> (example, meaning); dim 0 of each is the batch
    output: str  # shape, dtype and range of what the module returns
    # source of `def sample(program, n, seed, folder)`: n uint8 (n, C, H, W) images, as `genscale sample --seed`
    # gives on a CPU; `program` is torch.export.load(<name>.pt2).module(), `folder` the export's folder
    sample_code: str
    notes: tuple[str, ...] = ()  # what the export does not carry, or carries differently
    write_extra: Callable[[Path], None] | None = None  # more files into the export folder (ddpm: its scheduler)


class ClassifierConfig(Strict):
    epochs: Int = Doc(3, "fmnist-classifier: epochs over the labelled train split (~50 s each on 2 cores)", ge=1)
    train_size: Int | None = Doc(None, "labelled examples used (None: all); tests use few", ge=10)
    seed: Int = Doc(0, "seed of the classifier's training")


class ImageEvalConfig(EvalBase):
    extractor: Literal["fmnist-classifier", "inception"] = Doc(
        "fmnist-classifier", "feature network for FID/KID/precision/recall: the domain classifier or Inception-v3")
    n_samples: Int = Doc(10000, "generated samples (and at most this many test images)", ge=2)
    kid_subsets: Int = Doc(100, "KID: random subsets averaged (as torch-fidelity)", ge=1)
    kid_subset_size: Int = Doc(1000, "KID: samples per subset", ge=2)
    pr_k: Int = Doc(3, "improved precision/recall: the k of the k-NN radii (Kynkaanniemi et al. 2019)", ge=1)
    every_n_samples: Int = Doc(1000, "during training: generated images scored (FID) against as many validation "
                               "images (the test split is kept for the final numbers)", ge=2)
    classifier: ClassifierConfig = Doc(ClassifierConfig(), "how the fmnist-classifier extractor is trained")


def check_one_pass(label: int | None, steps: int | None) -> None:
    """An unconditional one-pass sampler (a generator, a decoder) takes neither a class nor a step count."""
    from genscale.errors import GenscaleError

    if label is not None:
        raise GenscaleError("class: this model is unconditional; it takes no class")
    if steps is not None:
        raise GenscaleError("steps: this model samples in one pass; it takes no sampling steps")


def timed_images(sampler: ImageSampler, n: int, seed: int) -> tuple[torch.Tensor, float]:
    """(n samples, seconds per image): the sampling cost stored with every evaluation."""
    started = time.perf_counter()
    images = sampler.images(n, seed=seed)
    return images, (time.perf_counter() - started) / max(1, n)


@dataclass(frozen=True)
class ImageFamily:
    """A Family (families/__init__.py) for uint8 image data; the family module gives its own pieces."""

    name: str
    model_config: type[Strict]
    train_config: type[Strict]
    eval_config: type[Strict]
    labels: dict[str, str]
    presets: Callable[[], dict[str, dict[str, dict[str, Any]]]]
    build_recipe: Callable[[RunConfig, DataSplits, torch.device, World], Recipe]
    sampler_from_checkpoint: Callable[[RunConfig, dict[str, torch.Tensor], dict[str, Any], torch.device],
                                      ImageSampler]
    count_flops: Callable[[RunConfig, tuple[int, int, int]], int]  # one training step, on the CPU
    examples_per_step: Callable[[RunConfig], int]
    # metrics of the model itself beyond its samples (a VAE's likelihood bounds): (cfg, splits, sampler, device) ->
    # records, and their names with their direction
    model_metrics: Callable[[RunConfig, DataSplits, Any, torch.device], dict[str, dict]] | None = None
    model_metric_names: dict[str, str] = field(default_factory=dict)
    # more grids beside samples.png (a VAE's reconstructions): (splits, sampler) -> file name -> uint8 images
    extra_grids: Callable[[DataSplits, Any], dict[str, torch.Tensor]] | None = None
    # checks across sections that one section's validation cannot see (a sampler's steps against the chain's)
    check_config: Callable[[RunConfig], None] | None = None
    # what `genscale tune` searches without --space: {dotted key: distribution} (tune/space.py)
    tune_space: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the sampler's network for `genscale export --format torch`: (cfg, sampler) -> NetworkExport
    network_export: Callable[[RunConfig, Any], NetworkExport] | None = None
    data_kind: Literal["image"] = "image"

    def load_data(self, cfg: RunConfig, run_dir: Path | None) -> DataSplits:
        from genscale.data.datasets import load_image_data

        return load_image_data(cfg.data)

    def check_data(self, cfg: RunConfig, data: DataSplits) -> None:
        from genscale.errors import GenscaleError

        if self.check_config is not None:
            self.check_config(cfg)
        if cfg.eval.every and len(data.val) < 2:
            raise GenscaleError(f"eval.every: dataset {data.name} has {len(data.val)} validation images; scoring "
                                "during training needs a validation split (data.val_size or data.val_fraction)")

    def full_size(self, data: DataSplits) -> int:
        return len(data.full_train)

    def recipe(self, cfg: RunConfig, data: DataSplits, device: torch.device, *, resume: bool,
               world: World) -> Recipe:
        return self.build_recipe(cfg, data, device, world)

    def new_run_files(self, data: DataSplits, run_dir: Path) -> list[Path]:
        return []

    def load_sampler(self, run_dir: Path, cfg: RunConfig, device: torch.device, *, folder: str = "checkpoints",
                     step: int | None = None) -> tuple[ImageSampler, int]:
        from genscale.train.checkpoint import load_checkpoint

        ckpt = load_checkpoint(run_dir / folder, step)
        return self.sampler_from_checkpoint(cfg, ckpt.tensors, ckpt.sidecar, device), ckpt.step

    def produced_metrics(self, cfg: RunConfig) -> dict[str, str]:
        from genscale.metrics.evaluate import EXTRACTOR_METRICS

        return {**EXTRACTOR_METRICS[cfg.eval.extractor], **self.model_metric_names}

    def evaluate(self, cfg: RunConfig, data: DataSplits, sampler: ImageSampler, device: torch.device
                 ) -> tuple[dict[str, dict], dict[str, dict]]:
        """FID/KID(/IS), precision/recall of eval.n_samples samples against the test split, each with its floor;
        the family's own model metrics; facts: seconds per sampled image, the domain extractor's test accuracy."""
        from genscale.metrics.evaluate import evaluate_images, make_extractor

        extractor = make_extractor(data, cfg.eval, device)
        images, seconds = timed_images(sampler, cfg.eval.n_samples, cfg.train.seed + 1)
        records = evaluate_images(images, data, extractor, cfg.eval)
        if self.model_metrics is not None:
            records.update(self.model_metrics(cfg, data, sampler, device))
        facts = {KEY_SAMPLING_SECONDS: {"value": seconds, "n": len(images), "device": str(device)}}
        if hasattr(extractor, "test_accuracy"):
            facts["extractor_test_accuracy"] = {"value": extractor.test_accuracy, "extractor": extractor.id}
        return records, facts

    def periodic_evaluation(self, cfg: RunConfig, data: DataSplits, recipe: Recipe, device: torch.device
                            ) -> Evaluation | None:
        """FID of eval.every_n_samples samples of the live sampler against as many validation images (the test
        split stays unseen until the final evaluation)."""
        from genscale.metrics.evaluate import extract, make_extractor, reference_features
        from genscale.metrics.image import KEY_FID, feature_moments, fid_from_moments
        from genscale.train.loop import Evaluation

        e = cfg.eval
        if e.every is None:
            return None
        n = min(e.every_n_samples, len(data.val))
        extractor = make_extractor(data, e, device)
        reference = feature_moments(reference_features(extractor, data, n, e.batch_size, split="val"))

        def score_images() -> float:
            images = recipe.sampler().images(n, seed=cfg.train.seed + 2)
            return fid_from_moments(*feature_moments(extract(extractor, images, e.batch_size, "generated")[0]),
                                    *reference)

        return Evaluation(KEY_FID + extractor.metric_suffix,
                          f"{n} generated vs {n} validation images ({extractor.id})", e.every, score_images)

    def write_samples(self, cfg: RunConfig, data: DataSplits, sampler: ImageSampler, run_dir: Path) -> list[Path]:
        from genscale.pipeline import save_grid

        paths = [save_grid(sampler.images(64, seed=SAMPLE_SEED), run_dir / "samples.png")]
        extra = self.extra_grids(data, sampler) if self.extra_grids is not None else {}
        return paths + [save_grid(images, run_dir / name, nrow=8) for name, images in extra.items()]

    def flops_per_step(self, cfg: RunConfig, data: DataSplits) -> int:
        return self.count_flops(cfg, data.image_shape)

    def count_settings(self, n: int) -> dict[str, Any]:
        return {"eval.n_samples": n}

    def floor(self, cfg: RunConfig, data: DataSplits, metric: str) -> dict[str, Any]:
        """Caches the extractor and the test (and val) reference features; FID's floor is the real-vs-real FID
        stored with every FID record (an equal number of training images against the same test images)."""
        from genscale.metrics.evaluate import make_extractor, real_floor, reference_features
        from genscale.train.machinery import select_device

        e = cfg.eval
        extractor = make_extractor(data, e, select_device(cfg.train.device))
        n = min(e.n_samples, len(data.test))
        reference_features(extractor, data, n, e.batch_size)
        if e.every and len(data.val) >= 2:
            reference_features(extractor, data, min(e.every_n_samples, len(data.val)), e.batch_size, split="val")
        floors = real_floor(extractor, data, e)
        if metric not in floors:
            return {"metric": metric, "value": 0.0, "how": "0: genscale measures no higher floor for this metric"}
        return {"metric": metric, "value": floors[metric]["value"], "how": floors[metric]["how"]}
