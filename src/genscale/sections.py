"""The config sections every family shares, and the strict base they are built on.

A family adds its own `model`, `train` and `eval` sections (families/<name>.py) on top of the shared bases here;
config.py joins them into one RunConfig, discriminated by `model.family`. Every field is documented with
`Field(description=...)`, so the JSON schema and `--help` show it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from genscale.errors import GenscaleError
from genscale.registry import MODEL_NAME, MODEL_NAME_RULE


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _not_bool(value: Any) -> Any:
    """YAML's `true` is not a number: pydantic would take it as 1 (train.steps=true would train one step)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]


def Doc(default: Any = ..., description: str = "", **constraints: Any) -> Any:  # noqa: N802  (reads like Field)
    """A documented field: `Field(default, description=..., **constraints)`."""
    return Field(default, description=description, **constraints)


TEXT_SOURCES = ("shakespeare", "sotu", "text")  # text sources; a stored `dataset` holds either kind
IMAGE_SOURCES = ("fashion-mnist", "imagefolder", "npz", "idx")


class DataConfig(Strict):
    source: Literal["fashion-mnist", "shakespeare", "sotu", "dataset", "imagefolder", "npz", "idx", "text"] = Doc(
        "fashion-mnist", "built-in (images: fashion-mnist; text: shakespeare, sotu), a stored dataset, or a reader")
    dataset: str | None = Doc(None, "source dataset: a name or version id made by `genscale data ingest`")
    clean: bool = Doc(False, "source dataset: train on its cleaned version (`genscale data clean` defaults; cached)")
    augment: str = Doc("none", "on-the-fly augmentation, comma-separated (data/augment.py): hflip, rotate, translate, "
                       "scale, jitter (real images); diffaugment or diff-color/-translation/-cutout (GAN step)")
    path: str | None = Doc(None, "file or folder for imagefolder/npz/idx/text sources")
    labels_path: str | None = Doc(None, "idx source only: the labels file")
    field: str = Doc("text", "text source: the JSONL field holding each document")
    size: Int | None = Doc(None, "unique training examples (text: tokens), a nested subset; None: all", ge=1)
    memory_mb: Float = Doc(4096, "source dataset: a train split larger than this (MiB) is read batch by batch from "
                           "its memory-mapped shards instead of loaded whole", ge=0)
    val_size: Int = Doc(5000, "fashion-mnist: examples carved from the train split for validation", ge=0)
    val_fraction: Float = Doc(0.05, "other sources: share of the train split held out for validation (text: whole "
                              "documents; one document: its end, from a line start)", ge=0, lt=1)
    test_fraction: Float = Doc(0.1, "imagefolder/npz/idx: share held out for test metrics", gt=0, lt=1)
    split_seed: Int = Doc(0, "seed of splits and subsets, independent of the training seed")
    channels: Annotated[Literal[1, 3], BeforeValidator(_not_bool)] = Doc(
        1, "imagefolder: 1 grayscale (PIL 'L'), 3 RGB")
    image_size: Int | None = Doc(None, "imagefolder: resize to a square of this side", ge=8)
    tokenizer: Literal["char", "bpe"] = Doc("char", "text: characters (any Unicode) or byte-level BPE (HF tokenizers)")
    vocab_size: Int = Doc(4096, "text: BPE vocabulary / most characters kept (rarer: <unk>), special tokens included; "
                          "trained on the train split only", ge=8, le=2**32)

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


class ModelBase(Strict):
    """A family's model section: its `family` tag, `arch` and `size` (a preset of the arch), and its own settings.
    `presets` (arch -> size -> hyperparameters) is the family's; torch is imported only when a config is checked."""

    presets: ClassVar[Callable[[], dict[str, dict[str, Any]]]]

    @model_validator(mode="after")
    def _size_of_arch(self) -> ModelBase:
        presets = type(self).presets()
        if self.size not in presets[self.arch]:
            raise ValueError(f"size '{self.size}' is not a preset of {self.arch} "
                             f"(choose {', '.join(presets[self.arch])})")
        return self


class TrainBase(Strict):
    """What the shared loop reads, for every family; a family's section adds its optimiser and step settings."""

    family: str = Field("", exclude=True, description="set from model.family (selects this section's settings)")
    steps: Int = Doc(2000, "optimiser updates (gan: generator updates)", ge=1)
    batch_size: Int = Doc(64, "examples per update (gpt: sequences per micro-batch)", ge=1)
    device: Literal["auto", "cuda", "mps", "cpu"] = Doc("auto", "auto: cuda, then mps, then cpu")
    precision: Literal["auto", "bf16", "fp32"] = Doc("auto", "auto: bf16 autocast on CUDA, fp32 elsewhere")
    checkpoint_every: Int = Doc(500, "steps between checkpoints (one is always written at the end)", ge=1)
    log_every: Int = Doc(50, "steps between metric logs and the non-finite loss check", ge=1)
    seed: Int = Doc(0, "training seed: initialisation, noise and batch order")
    gpus: Int = Doc(1, "data-parallel processes (DDP): GPUs with CUDA, else CPU processes (gloo); batch_size "
                    "stays the global batch. `genscale train --nproc N` sets it; under torchrun the world size",
                    ge=1)

    @model_validator(mode="after")
    def _divides_over_processes(self):
        """Each process takes an equal share of a step: its rows of the batch (gpt: or its micro-batches)."""
        accum = getattr(self, "grad_accum", 1)
        if self.gpus > 1 and self.batch_size % self.gpus and accum % self.gpus:
            what = f"batch_size {self.batch_size}" + (f" nor grad_accum {accum}" if accum > 1 else "")
            raise ValueError(f"{what} does not divide over train.gpus = {self.gpus} data-parallel processes; use "
                             f"a multiple of {self.gpus}")
        return self


class EvalBase(Strict):
    """What every family's evaluation reads; a family's section adds its metrics' settings."""

    family: str = Field("", exclude=True, description="set from model.family (selects this section's settings)")
    batch_size: Int = Doc(250, "images (image families) or context windows (gpt) per forward pass", ge=1)
    on_train_end: bool = Doc(True, "evaluate and gate right after training")
    every: Int | None = Doc(None, "steps between cheap evaluations during training (a metric curve; the best "
                            "checkpoint is kept in best/ and named by best.json); None: off", ge=1)


class Threshold(Strict):
    max: Float | None = Doc(None, "metric must be <= max")
    min: Float | None = Doc(None, "metric must be >= min")
    max_over_floor: Float | None = Doc(None, "metric must be <= this times its real-vs-real floor (FID: an equal "
                                       "number of training images against the same test images), a gate that "
                                       "means the same on any dataset", gt=0)

    @model_validator(mode="after")
    def _one_bound(self) -> Threshold:
        if self.max is None and self.min is None and self.max_over_floor is None:
            raise ValueError("needs 'max', 'min' or 'max_over_floor'")
        return self


with warnings.catch_warnings():  # the field `register` shadows ABCMeta.register, which no config class is asked for
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class GateConfig(BaseModel):
        """The quality gate: a bound per metric (`fid_fmnist: {max: 40}`, every other key is a metric's name) and,
        optionally, the registered model a run that passes becomes a version of."""

        model_config = ConfigDict(extra="allow", validate_assignment=True)
        __pydantic_extra__: dict[str, Threshold] = Field(init=False)  # metric name -> bound, each validated
        register: str | None = Doc(None, "register a run that passes under this model name (`genscale models`); "
                                   "None: not registered")

        @field_validator("register")
        @classmethod
        def _model_name(cls, value: str | None) -> str | None:
            if value is not None and not MODEL_NAME.fullmatch(value):
                raise ValueError(MODEL_NAME_RULE)
            return value

        @property
        def thresholds(self) -> dict[str, Threshold]:
            """metric name -> bound."""
            return dict(self.__pydantic_extra__ or {})


class TrackingConfig(Strict):
    uri: str | None = Doc(None, "MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite:///<runs>/mlflow.db")
    experiment: str = Doc("genscale", "MLflow experiment of the run")
