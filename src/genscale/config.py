"""Typed run configuration loaded from YAML, with strict keys and `--set a.b=c` overrides.

Every field says what it is for. An unknown key or a wrong type is a GenscaleError naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from genscale.errors import GenscaleError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _not_bool(value: Any) -> Any:
    """YAML's `true` is not a number: pydantic would take it as 1 (train.steps=true would train one step)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]


TEXT_SOURCES = ("shakespeare", "sotu", "text")  # sources of the gpt family; a stored `dataset` holds either kind
IMAGE_SOURCES = ("fashion-mnist", "imagefolder", "npz", "idx")


class DataConfig(Strict):
    source: Literal["fashion-mnist", "shakespeare", "sotu", "dataset", "imagefolder", "npz", "idx", "text"
                    ] = "fashion-mnist"  # built-in (images: fashion-mnist; text: shakespeare, sotu), store, reader
    dataset: str | None = None  # source dataset: a name or version id made by `genscale data ingest`
    clean: bool = False  # source dataset: train on its cleaned version (`genscale data clean` defaults; cached)
    augment: str = "none"  # on-the-fly augmentation, comma-separated (data/augment.py): hflip, rotate, translate,
    #                        scale, jitter (real images); diffaugment or diff-color/-translation/-cutout (GAN step)
    path: str | None = None  # file or folder for imagefolder/npz/idx/text sources
    labels_path: str | None = None  # idx source only: the labels file
    field: str = "text"  # text source: the JSONL field holding each document
    size: Int | None = Field(None, ge=1)  # unique training examples (text: tokens), a nested subset; None: all
    val_size: Int = Field(5000, ge=0)  # fashion-mnist: examples carved from the train split for validation
    val_fraction: Float = Field(0.05, ge=0, lt=1)  # other sources: share of the train split held out for validation
    #                                                 (text: whole documents; one document: its end, from a line start)
    test_fraction: Float = Field(0.1, gt=0, lt=1)  # imagefolder/npz/idx: share held out for test metrics
    split_seed: Int = 0  # seed of splits and subsets, independent of the training seed
    channels: Annotated[Literal[1, 3], BeforeValidator(_not_bool)] = 1  # imagefolder: 1 grayscale (PIL "L"), 3 RGB
    image_size: Int | None = Field(None, ge=8)  # imagefolder: resize to a square of this side
    tokenizer: Literal["char", "bpe"] = "char"  # text: characters (any Unicode) or byte-level BPE (HF tokenizers)
    vocab_size: Int = Field(4096, ge=8, le=2**32)  # text: BPE vocabulary / most characters kept (rarer: <unk>),
    #                                                special tokens included; trained on the train split only

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


ARCHS = {"gan": ("gan-mlp", "dcgan"), "gpt": ("gpt",)}  # family -> its networks; the first is the default


class ModelConfig(Strict):
    family: Literal["gan", "gpt"] = "gan"  # gan: images (models/gan.py); gpt: text (models/gpt.py)
    arch: Literal["gan-mlp", "dcgan", "gpt"] = "dcgan"  # network of the family; default: dcgan for gan, gpt for gpt
    size: str = "small"  # preset name from the arch's presets (models/gan.py, models/gpt.py)
    z_dim: Int = Field(100, ge=1)  # gan: latent size; 100 like the original GAN and DCGAN papers
    loss: Literal["ns", "hinge", "wgan-gp"] = "ns"  # gan: ns is non-saturating BCE (Goodfellow et al. 2014)
    gp_weight: Float = Field(10.0, ge=0)  # gan wgan-gp: gradient-penalty weight lambda (Gulrajani et al. 2017)
    block_size: Int = Field(256, ge=2)  # gpt: context length in tokens
    dropout: Float = Field(0.0, ge=0, lt=1)  # gpt: dropout on attention, residual and embedding outputs
    bias: bool = False  # gpt: biases in Linear and LayerNorm layers; without is a little faster and as good
    init_from: str | None = None  # gpt: a run (id, prefix or folder) whose final weights start this one (fine-tuning);
    #                               its tokenizer is reused, so data.tokenizer/vocab_size must match it

    @model_validator(mode="before")
    @classmethod
    def _default_arch(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "arch" not in raw and raw.get("family") in ARCHS:
            raw = {**raw, "arch": ARCHS[raw["family"]][0]}
        return raw

    @model_validator(mode="after")
    def _arch_of_family(self) -> ModelConfig:
        if self.arch not in ARCHS[self.family]:
            raise ValueError(f"arch '{self.arch}' is not a {self.family} network "
                             f"(choose {', '.join(ARCHS[self.family])})")
        if self.init_from and self.family != "gpt":
            raise ValueError("init_from: fine-tuning from another run is built for the gpt family only")
        from genscale.models import PRESETS  # torch is imported only once a config is checked

        if self.size not in PRESETS[self.arch]:
            raise ValueError(f"size '{self.size}' is not a preset of {self.arch} "
                             f"(choose {', '.join(PRESETS[self.arch])})")
        return self


class TrainConfig(Strict):
    steps: Int = Field(2000, ge=1)  # optimiser updates (gan: generator updates)
    batch_size: Int = Field(64, ge=1)  # examples per update (gpt: sequences per micro-batch)
    betas: tuple[Float, Float] | None = None  # Adam(W) betas; None: (0.5, 0.999) for gan as in DCGAN (Radford et
    #                                           al. 2016), (0.9, 0.95) for gpt as in GPT-3 (Brown et al. 2020)
    lr_g: Float = Field(2e-4, gt=0)  # gan: Adam learning rates; 2e-4 as in DCGAN
    lr_d: Float = Field(2e-4, gt=0)
    d_steps: Int = Field(1, ge=1)  # gan: discriminator updates per generator update (5 is usual for wgan-gp)
    ema_decay: Float = Field(0.999, ge=0, lt=1)  # gan: EMA of generator weights (samples and metrics use it);
    #                                             decay at update n is min(ema_decay, (1 + n) / (10 + n)), a warm-up
    lr: Float = Field(1e-3, gt=0)  # gpt: peak AdamW learning rate (1e-3 suits small models; GPT-2 small used 6e-4)
    min_lr_ratio: Float = Field(0.1, ge=0, le=1)  # gpt: the cosine schedule ends at lr * this (Hoffmann et al. 2022)
    warmup_steps: Int = Field(100, ge=0)  # gpt: linear warm-up steps before the cosine decay
    weight_decay: Float = Field(0.1, ge=0)  # gpt: AdamW decay, on matrices and embeddings only (not biases/norms)
    grad_accum: Int = Field(1, ge=1)  # gpt: micro-batches per update; tokens per update = this * batch * block
    grad_clip: Float = Field(1.0, ge=0)  # gpt: clip the global gradient norm to this; 0 disables
    compile: bool = False  # gpt: torch.compile the model (pays off on CUDA; compilation takes a minute)
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"  # auto: cuda, then mps, then cpu
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    checkpoint_every: Int = Field(500, ge=1)  # steps between checkpoints (one is always written at the end)
    log_every: Int = Field(50, ge=1)  # steps between metric logs and the non-finite loss check
    seed: Int = 0  # training seed: initialisation, noise and batch order

    def adam_betas(self, family: str) -> tuple[float, float]:
        return self.betas or ((0.9, 0.95) if family == "gpt" else (0.5, 0.999))


class ClassifierConfig(Strict):
    epochs: Int = Field(3, ge=1)  # fmnist-classifier: epochs over the labelled train split (~50 s each on 2 cores)
    train_size: Int | None = Field(None, ge=10)  # labelled examples used (None: all); tests use few
    seed: Int = 0


class EvalConfig(Strict):
    extractor: Literal["fmnist-classifier", "inception"] = "fmnist-classifier"  # gan: feature network for FID/KID
    n_samples: Int = Field(10000, ge=2)  # gan: generated samples (and at most this many test images)
    kid_subsets: Int = Field(100, ge=1)  # gan KID: random subsets averaged (as torch-fidelity)
    kid_subset_size: Int = Field(1000, ge=2)  # gan KID: samples per subset
    batch_size: Int = Field(250, ge=1)  # images (gan) or context windows (gpt) per forward pass
    val_tokens: Int = Field(65536, ge=1)  # gpt: held-out tokens scored for val_loss and perplexities
    prompts: Int = Field(32, ge=1)  # gpt BLEU: prompts taken from held-out documents
    prompt_tokens: Int = Field(64, ge=1)  # gpt BLEU: tokens of each prompt
    continuation_tokens: Int = Field(64, ge=1)  # gpt BLEU: tokens generated per prompt, scored against the next
    #                                             this many held-out tokens
    diversity_samples: Int = Field(16, ge=2)  # gpt self-BLEU and distinct-n: unprompted samples of
    sample_tokens: Int = Field(128, ge=1)  # gpt: tokens per unprompted sample
    temperature: Float = Field(1.0, ge=0)  # gpt evaluation sampling (0: greedy); 1 with no filter is the model itself
    top_k: Int | None = Field(None, ge=1)  # gpt evaluation sampling: keep the k most likely tokens
    top_p: Float | None = Field(None, gt=0, le=1)  # gpt evaluation sampling: nucleus mass
    bleu_tokenize: Literal["13a", "char", "zh", "ja-mecab", "intl", "none"] = "13a"  # sacrebleu tokenizer of BLEU,
    #                                     self-BLEU and distinct-n; "char" (or "zh") for text written without spaces
    on_train_end: bool = True  # evaluate and gate right after training
    every: Int | None = Field(None, ge=1)  # steps between cheap evaluations during training (a metric curve; the
    #                                       best checkpoint is kept in best/ and named by best.json); None: off
    every_n_samples: Int = Field(1000, ge=2)  # gan, during training: generated images scored (FID) against as many
    #                                           validation images (the test split is kept for the final numbers)
    every_val_tokens: Int = Field(8192, ge=1)  # gpt, during training: held-out tokens scored (val_loss)
    classifier: ClassifierConfig = ClassifierConfig()  # how the fmnist-classifier extractor is trained


class Threshold(Strict):
    max: Float | None = None  # metric must be <= max
    min: Float | None = None  # metric must be >= min

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
    gate: dict[str, Threshold] = {}  # metric name -> bound, e.g. {fid_fmnist: {max: 40}} or {val_loss: {max: 1.6}}
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _data_of_family(self) -> RunConfig:
        source = self.data.source
        if self.model.family == "gpt" and source in IMAGE_SOURCES:
            raise ValueError(f"data.source '{source}' holds images; the gpt family trains on text "
                             f"({', '.join(TEXT_SOURCES)}, or a stored text dataset)")
        if self.model.family == "gan" and source in TEXT_SOURCES:
            raise ValueError(f"data.source '{source}' holds text; the gan family trains on images "
                             f"({', '.join(IMAGE_SOURCES)}, or a stored image dataset)")
        return self


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


def config_with(cfg: RunConfig, settings: dict[str, Any], origin: str) -> RunConfig:
    """A copy of `cfg` with dotted keys set ({'eval.n_samples': 100}), validated; `origin` names them in errors."""
    raw = cfg.model_dump(mode="json")
    for key, value in settings.items():
        set_nested(raw, key.split("."), value, origin)
    return config_from_dict(raw, origin)


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
