"""Typed run configuration loaded from YAML, with strict keys and `--set a.b=c` overrides.

Every field says what it is for. An unknown key or a wrong type is a GenscaleError naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from genscale.errors import GenscaleError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    source: Literal["fashion-mnist", "dataset", "imagefolder", "npz", "idx"] = "fashion-mnist"  # built-in/store/reader
    dataset: str | None = None  # source dataset: a name or version id made by `genscale data ingest`
    clean: bool = False  # source dataset: train on its cleaned version (`genscale data clean` defaults; cached)
    augment: str = "none"  # on-the-fly augmentation, comma-separated (data/augment.py): hflip, rotate, translate,
    #                        scale, jitter (real images); diffaugment or diff-color/-translation/-cutout (GAN step)
    path: str | None = None  # file or folder for imagefolder/npz/idx sources
    labels_path: str | None = None  # idx source only: the labels file
    size: int | None = Field(None, ge=1)  # unique training examples, a nested subset; None: all
    val_size: int = Field(5000, ge=0)  # built-in sets: examples carved from the train split for validation
    val_fraction: float = Field(0.05, ge=0, lt=1)  # other sources: share of the train split held out for validation
    test_fraction: float = Field(0.1, gt=0, lt=1)  # imagefolder/npz/idx: share held out for test metrics
    split_seed: int = 0  # seed of splits and subsets, independent of the training seed
    channels: Literal[1, 3] = 1  # imagefolder: 1 grayscale (PIL "L"), 3 RGB
    image_size: int | None = Field(None, ge=8)  # imagefolder: resize to a square of this side

    @field_validator("augment")
    @classmethod
    def _known_augmentations(cls, value: str) -> str:
        from genscale.data.augment import parse_augment

        try:
            parse_augment(value)
        except GenscaleError as e:
            raise ValueError(str(e).removeprefix("data.augment: ")) from None
        return value

    @model_validator(mode="after")
    def _dataset_source(self) -> DataConfig:
        if self.source == "dataset" and not self.dataset:
            raise ValueError("source 'dataset' needs data.dataset (a name from `genscale data ingest`)")
        if self.clean and self.source != "dataset":
            raise ValueError("clean: true needs source 'dataset'; ingest first, e.g. "
                             "`genscale data ingest fashion-mnist --name fmnist`")
        return self


class ModelConfig(Strict):
    family: Literal["gan"] = "gan"  # model family; vae, diffusion and gpt come later
    arch: Literal["gan-mlp", "dcgan"] = "dcgan"  # network of the family
    size: str = "small"  # preset name from the arch's presets (models/gan.py)
    z_dim: int = Field(100, ge=1)  # latent size; 100 like the original GAN and DCGAN papers
    loss: Literal["ns", "hinge", "wgan-gp"] = "ns"  # ns: non-saturating BCE (Goodfellow et al. 2014)
    gp_weight: float = Field(10.0, ge=0)  # wgan-gp: gradient-penalty weight lambda (Gulrajani et al. 2017)


class TrainConfig(Strict):
    steps: int = Field(2000, ge=1)  # generator updates
    batch_size: int = Field(64, ge=1)
    lr_g: float = Field(2e-4, gt=0)  # Adam learning rates; 2e-4 with betas (0.5, 0.999) as in DCGAN
    lr_d: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    d_steps: int = Field(1, ge=1)  # discriminator updates per generator update (5 is usual for wgan-gp)
    ema_decay: float = Field(0.999, ge=0, lt=1)  # EMA of generator weights; samples and metrics use the EMA
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"  # auto: cuda, then mps, then cpu
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    checkpoint_every: int = Field(500, ge=1)  # steps between checkpoints (one is always written at the end)
    log_every: int = Field(50, ge=1)  # steps between metric logs and the non-finite loss check
    seed: int = 0  # training seed: initialisation, noise and batch order


class ClassifierConfig(Strict):
    epochs: int = Field(3, ge=1)  # fmnist-classifier: epochs over the labelled train split (~50 s each on 2 cores)
    train_size: int | None = Field(None, ge=10)  # labelled examples used (None: all); tests use few
    seed: int = 0


class EvalConfig(Strict):
    extractor: Literal["fmnist-classifier", "inception"] = "fmnist-classifier"  # feature network for FID/KID
    n_samples: int = Field(10000, ge=2)  # generated samples (and at most this many test images)
    kid_subsets: int = Field(100, ge=1)  # KID: random subsets averaged (as torch-fidelity)
    kid_subset_size: int = Field(1000, ge=2)  # KID: samples per subset
    batch_size: int = Field(250, ge=1)
    on_train_end: bool = True  # evaluate and gate right after training
    classifier: ClassifierConfig = ClassifierConfig()  # how the fmnist-classifier extractor is trained


class Threshold(Strict):
    max: float | None = None  # metric must be <= max
    min: float | None = None  # metric must be >= min

    @model_validator(mode="after")
    def _one_bound(self) -> Threshold:
        if self.max is None and self.min is None:
            raise ValueError("needs 'max' or 'min'")
        return self


class TrackingConfig(Strict):
    uri: str | None = None  # MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite:///<runs>/mlflow.db
    experiment: str = "genscale"


class RunConfig(Strict):
    name: str = "run"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    gate: dict[str, Threshold] = {}  # metric name -> bound, e.g. {fid_fmnist: {max: 40}}
    tracking: TrackingConfig = TrackingConfig()


def _format_error(e: ValidationError, origin: str) -> str:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{key}'"
    return f"{origin}: key '{key}': {err['msg']} (got {err.get('input')!r})"


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.steps=100' -> (['train', 'steps'], 100); the value is read as YAML."""
    if "=" not in item:
        raise GenscaleError(f"--set {item}: expected KEY=VALUE, e.g. train.steps=100")
    key, value = item.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(value)
    except yaml.YAMLError:
        raise GenscaleError(f"--set {item}: value is not valid YAML") from None


def set_nested(raw: dict[str, Any], path: list[str], value: Any, origin: str) -> None:
    """raw[a][b][c] = value for path [a, b, c], creating sections; `origin` names the setting in errors."""
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise GenscaleError(f"{origin}: '{part}' is not a section")
        node = child
    node[path[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set nested keys; unknown keys are left for validation to reject with their full name."""
    for item in overrides:
        path, value = parse_override(item)
        set_nested(raw, path, value, f"--set {item}")
    return raw


def config_from_dict(raw: dict[str, Any], origin: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise GenscaleError(_format_error(e, origin)) from None


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file whose top level is a mapping; unreadable, invalid or non-mapping files are GenscaleErrors."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise GenscaleError(f"{path}: cannot read {what} ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise GenscaleError(f"{path}: invalid YAML{where}") from None
    if not isinstance(raw, dict):
        raise GenscaleError(f"{path}: top level must be a mapping of keys")
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config, apply `--set` overrides, validate strictly."""
    return config_from_dict(apply_overrides(read_yaml_mapping(path), list(overrides)), str(path))
