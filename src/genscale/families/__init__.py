"""Model families as plug-ins: one module each (gan, gpt, vae, ddpm), each exporting one `Family` object.

A family says everything the rest of genscale asks of it: its config sections, networks and size presets, the data
it trains on and how it loads it, its training recipe and its sampler, the metrics it produces and how it scores
them, how FLOPs per step, parameters N and examples per step are counted, and what a study's report calls D and N.
The pipeline, the CLI, a study and its report ask `family_of(cfg)`; nothing outside this package switches on a
family's name. A new family is a module here plus one line in FAMILIES.

Module imports stay light (config sections and this protocol): torch and the networks are imported when a family
is asked to build something.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch

    from genscale.config import RunConfig
    from genscale.sections import Strict
    from genscale.train.distributed import World
    from genscale.train.loop import Evaluation, Recipe


class ImageSampler(Protocol):
    """A trained image model with its sampling procedure (a generator; a VAE's decoder; a UNet + scheduler)."""

    kind: Literal["image"]
    classes: int | None  # class labels a request may condition on (0 .. classes - 1); None: unconditional
    steps: int | None  # default steps of a step-wise sampler (DDIM); None: one network pass, no steps to choose

    def images(self, n: int, *, seed: int, label: int | None = None, steps: int | None = None) -> torch.Tensor:
        """n samples as uint8 (n, C, H, W), quantised as a saved PNG would be; the same seed, the same images.
        `label`: all n of that class (conditional models; default: the classes in turn); `steps`: the sampler's
        steps instead of its default (a GenscaleError when the sampler cannot take them)."""
        ...

    def images_many(self, requests: Sequence[tuple[int, int]], *, label: int | None = None,
                    steps: int | None = None) -> list[torch.Tensor]:
        """Several (n, seed) requests in as few network passes as the family allows (the HTTP service batches
        concurrent requests so); each is what `images(n, seed=seed)` gives, up to float rounding of a larger batch."""
        ...


class TextSampler(Protocol):
    """A trained language model with its tokenizer and decoding procedure."""

    kind: Literal["text"]

    def texts(self, n: int, *, seed: int, prompt: str, max_new_tokens: int, temperature: float, top_k: int | None,
              top_p: float | None) -> list[str]:
        """n continuations of `prompt` (empty: the start of a document); the prompt is not repeated."""
        ...


Sampler = ImageSampler | TextSampler


class Family(Protocol):
    """What one model family tells the rest of genscale."""

    name: str  # model.family
    data_kind: Literal["image", "text"]  # the sources it trains on
    model_config: type[Strict]  # its `model`, `train` and `eval` sections (discriminated by model.family)
    train_config: type[Strict]
    eval_config: type[Strict]
    labels: dict[str, str]  # a report's words: "D" (what data size counts), "N" (what parameters count), "unit"
    tune_space: dict[str, dict[str, Any]]  # what `genscale tune` searches without --space (tune/space.py format)

    def presets(self) -> dict[str, dict[str, dict[str, Any]]]:
        """arch -> size preset -> its hyperparameters; the first arch is the default."""
        ...

    def load_data(self, cfg: RunConfig, run_dir: Path | None) -> Any:
        """The run's data (its own saved artefacts, e.g. a tokenizer, when `run_dir` holds them)."""
        ...

    def check_data(self, cfg: RunConfig, data: Any) -> None:
        """Fail before a run is recorded when the data cannot serve the config (e.g. eval.every without a val split)."""
        ...

    def full_size(self, data: Any) -> int:
        """Unique training examples before data.size cuts them (images, or tokens)."""
        ...

    def recipe(self, cfg: RunConfig, data: Any, device: torch.device, *, resume: bool, world: World) -> Recipe:
        """The training recipe the shared loop drives (train/loop.py `Recipe`), this rank's part of it in a
        data-parallel `world` (train/distributed.py: its own rows, synced gradients and batch norm)."""
        ...

    def new_run_files(self, data: Any, run_dir: Path) -> list[Path]:
        """Files a new run saves beside its config (gpt: its tokenizer); returned to be tracked as artefacts."""
        ...

    def load_sampler(self, run_dir: Path, cfg: RunConfig, device: torch.device, *, folder: str = "checkpoints",
                     step: int | None = None) -> tuple[Sampler, int]:
        """The sampler of the run's newest intact checkpoint (or of `step`, in `folder`), and that step."""
        ...

    def produced_metrics(self, cfg: RunConfig) -> dict[str, str]:
        """The metrics a run with this config records at the end of training -> "lower" or "higher" is better
        ("neither": a diagnostic such as self-BLEU)."""
        ...

    def evaluate(self, cfg: RunConfig, data: Any, sampler: Sampler, device: torch.device
                 ) -> tuple[dict[str, dict], dict[str, dict]]:
        """(metric records on held-out data, facts stored beside them)."""
        ...

    def periodic_evaluation(self, cfg: RunConfig, data: Any, recipe: Recipe, device: torch.device
                            ) -> Evaluation | None:
        """The cheap metric of eval.every (None when it is off)."""
        ...

    def write_samples(self, cfg: RunConfig, data: Any, sampler: Sampler, run_dir: Path) -> list[Path]:
        """A fixed-seed look at the model beside the run (samples.png, samples.txt; a VAE's reconstructions)."""
        ...

    def flops_per_step(self, cfg: RunConfig, data: Any) -> int:
        """FLOPs of one training step, counted as the loop counts its first step."""
        ...

    def examples_per_step(self, cfg: RunConfig) -> int:
        """Training examples (images, or tokens) one step reads."""
        ...

    def count_settings(self, n: int) -> dict[str, Any]:
        """The eval settings `genscale eval --n N` sets (images generated; prompts and samples)."""
        ...

    def floor(self, cfg: RunConfig, data: Any, metric: str) -> dict[str, Any]:
        """The lowest value `metric` can take at the run's sample counts ({"value", "how"}); prepares and caches
        what evaluation needs (feature extractor, reference features, tokenized text) on the way."""
        ...


def _registry() -> dict[str, Family]:
    from genscale.families import ddpm, gan, gpt, vae

    return {f.name: f for f in (gan.FAMILY, gpt.FAMILY, vae.FAMILY, ddpm.FAMILY)}


FAMILIES: dict[str, Family] = _registry()


def family_of(cfg: RunConfig) -> Family:
    return FAMILIES[cfg.model.family]
