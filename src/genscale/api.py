"""The Python face of genscale: `from genscale import train, evaluate, sample, study, load`.

Each function does what its command does (`genscale train`, `eval`, `sample`, `study run`) and returns a small typed
object read back from the folder it wrote (`Run`, `Study`), so what a script sees is what the CLI would show and
what a later `load` reads. Bad input raises GenscaleError with one line, as the CLI would print it.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genscale.config import RunConfig, apply_overrides, config_from_dict, load_config
from genscale.errors import GenscaleError
from genscale.families.image import SAMPLE_SEED
from genscale.gate import GateResult
from genscale.paths import read_json


@dataclass(frozen=True)
class Run:
    """A run folder as it stands: its config, its final evaluation's metrics and its gate (None: not evaluated)."""

    id: str  # the MLflow run id
    folder: Path
    config: RunConfig
    metrics: dict[str, float] = field(default_factory=dict)  # metrics.json: name -> value
    gate: GateResult | None = None  # gate.passed, gate.reasons (one line per threshold)

    def sample(self, n: int = 16, **options: Any) -> torch.Tensor | list[str]:
        """`sample(self, n, ...)`."""
        return sample(self, n, **options)


@dataclass(frozen=True)
class Verdict:
    sentence: str  # "At 16,000 unique training examples and 4e+11 FLOPs, 2x data ..."
    decision: str  # data | compute | gpus | ... | no fit | per group
    details: dict[str, Any]  # analysis.json "verdict": the 2x changes with their intervals, the operating point


@dataclass(frozen=True)
class Study:
    """A study folder whose trials have been analysed (analysis.json, report.html)."""

    folder: Path
    name: str
    metric: str  # the metric the laws are fitted to, e.g. fid_fmnist
    verdict: Verdict
    analysis: dict[str, Any]  # analysis.json in full: laws, validation, comparisons, groups
    trials: tuple[dict[str, Any], ...]  # the finished trials' result.json records, in plan order
    failed: tuple[dict[str, Any], ...]  # the failed trials' error.json records

    @property
    def report(self) -> Path:
        return self.folder / "report.html"

    @classmethod
    def load(cls, folder: str | Path) -> Study:
        """A study folder as it stands, without running anything; one never analysed is an error."""
        from genscale.study.execute import load_results, read_plan

        folder = Path(folder).absolute()
        plan = read_plan(folder)
        path = folder / "analysis.json"
        if not path.exists():
            raise GenscaleError(f"{folder}: no analysis.json yet (genscale study resume/report {folder})")
        analysis = read_json(path, "study analysis")
        done, failed = load_results(folder, plan)
        v = analysis["verdict"]
        return cls(folder=folder, name=plan["name"], metric=plan["study"]["metric"],
                   verdict=Verdict(sentence=v["sentence"], decision=v["decision"], details=v), analysis=analysis,
                   trials=tuple(done), failed=tuple(failed))


RunLike = str | Path | Run


def _reference(run: RunLike) -> str:
    return str(run.folder if isinstance(run, Run) else run)


def _config(config: str | Path | dict[str, Any] | RunConfig, overrides: tuple[str, ...] | list[str]) -> RunConfig:
    if isinstance(config, RunConfig):
        return config_from_dict(apply_overrides(config.model_dump(mode="json"), list(overrides)), "config")
    if isinstance(config, dict):
        return config_from_dict(apply_overrides(copy.deepcopy(config), list(overrides)), "config")
    if isinstance(config, str | Path):
        return load_config(config, overrides)
    raise GenscaleError(f"train: config is a YAML path, a dict or a RunConfig, not {type(config).__name__}")


def load(run: RunLike) -> Run:
    """A run by id, unique id prefix, folder or 'latest' (as the CLI takes it)."""
    from genscale.pipeline import load_run, tracked_run_id

    folder, cfg = load_run(_reference(run))
    metrics_path, gate_path = folder / "metrics.json", folder / "gate.json"
    records = read_json(metrics_path, "metrics file") if metrics_path.exists() else {}
    gate = read_json(gate_path, "gate record") if gate_path.exists() else None
    return Run(id=tracked_run_id(folder), folder=folder, config=cfg,
               metrics={k: float(r["value"]) for k, r in records.items() if isinstance(r, dict) and "value" in r},
               gate=GateResult(gate["verdict"] == "PASS", tuple(gate["reasons"])) if gate else None)


def train(config: str | Path | dict[str, Any] | RunConfig | None = None, *, overrides: tuple[str, ...] | list[str] = (),
          resume: RunLike | None = None) -> Run:
    """Train a run from `config` (a YAML path, a dict as in the YAML, or a RunConfig; `overrides` as `--set`
    gives them: "train.steps=100"), evaluate it and apply its gate, as `genscale train` does; or continue the
    run `resume` from its newest checkpoint. One process: a data-parallel run (train.gpus > 1) is the CLI's."""
    from genscale import pipeline

    if resume is not None:
        if config is not None or overrides:
            raise GenscaleError("train: resume continues a run with its saved config; give no config or overrides")
        return load(pipeline.train(resume=_reference(resume)))
    if config is None:
        raise GenscaleError("train: give a config (a YAML path, a dict or a RunConfig), or resume=RUN")
    cfg = _config(config, overrides)
    if cfg.train.gpus > 1 and "WORLD_SIZE" not in os.environ:
        raise GenscaleError(f"train.gpus: {cfg.train.gpus} processes need `genscale train --nproc "
                            f"{cfg.train.gpus}`; the Python API trains in this one process")
    return load(pipeline.train(cfg))


def evaluate(run: RunLike, *, n: int | None = None, extractor: str | None = None) -> Run:
    """Score the run's newest checkpoint again (`genscale eval`), optionally with `n` samples or another image
    `extractor` (fmnist-classifier or inception); returns the run with the new metrics and gate."""
    from genscale.pipeline import evaluate_run

    if extractor not in (None, "fmnist-classifier", "inception"):
        raise GenscaleError(f"evaluate: unknown extractor '{extractor}' (choose fmnist-classifier or inception)")
    evaluate_run(_reference(run), extractor=extractor, n=n)
    return load(run)


def sample(run: RunLike, n: int = 16, *, seed: int = SAMPLE_SEED, prompt: str = "", max_new_tokens: int = 200,
           temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
           settings: dict[str, Any] | None = None) -> torch.Tensor | list[str]:
    """n samples of the run's newest checkpoint: images as a float tensor (n, C, H, W) in [0, 1] (quantised as a
    saved PNG would be), or, from a text run, n continuations of `prompt`. `settings`: dotted eval keys that change
    how an image run samples ({"eval.sampling_steps": 20}); the same seed gives the same samples."""
    from genscale.pipeline import check_sampling, run_sampler

    check_sampling(n=n, top_k=top_k, top_p=top_p, temperature=temperature, max_new_tokens=max_new_tokens)
    cfg, sampler = run_sampler(_reference(run), settings)
    if sampler.kind == "image":
        if prompt or max_new_tokens != 200 or temperature != 0.8 or top_k is not None or top_p is not None:
            raise GenscaleError("sample: prompt, max_new_tokens, temperature, top_k and top_p apply to text runs; "
                                f"this is a {cfg.model.family} run")
        return sampler.images(n, seed=seed).float().div_(255)
    if settings:
        raise GenscaleError("sample: settings apply to image runs; a text run's decoding is set by temperature, "
                            "top_k and top_p")
    return sampler.texts(n, seed=seed, prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                         top_k=top_k, top_p=top_p)


def study(spec: str | Path, *, workers: int | None = None, out: str | Path | None = None,
          ray_address: str | None = None) -> Study:
    """Run a study (`genscale study run`): a study YAML makes a new folder (`out`, default under <runs>/studies)
    and runs its trials on Ray; an existing study folder is resumed (`genscale study resume`). Returns the
    analysed study; `Study.load(folder)` reads one without running."""
    from genscale.study.execute import create_study, run_study

    if workers is not None and workers < 1:
        raise GenscaleError(f"study: workers must be at least 1, got {workers}")
    spec = Path(spec)
    if spec.is_dir():
        if out is not None:
            raise GenscaleError(f"study: {spec} is a study folder, resumed where it is; out= is for a study YAML")
        folder = spec
    else:
        folder = create_study(spec, Path(out) if out is not None else None)
    run_study(folder, workers=workers, ray_address=ray_address)
    return Study.load(folder)


__all__ = ["Run", "Study", "Verdict", "evaluate", "load", "sample", "study", "train"]
