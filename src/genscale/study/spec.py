"""A study YAML: a base run config, axes to vary, the metric to fit and the operating point of the verdict.

`expand_grid` expands the grid into trials (one resolved RunConfig each) and checks everything that can be
checked before any training starts: axis names and values, data sizes against the dataset, the metric.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from genscale.config import SECTIONS, RunConfig, Strict, _format_error, read_yaml_mapping, resolve_preset, set_nested
from genscale.errors import GenscaleError
from genscale.families import FAMILIES, family_of

# Axes with a meaning beyond "set this config key"; any other run-config key (e.g. train.lr_d) is an axis too.
ALIASES = {"seed": "train.seed", "init_from": "model.init_from"}
# Axes the laws are fitted over; every other axis (data.clean, data.augment, train.lr_d, ...) is a treatment that
# is compared value against value, paired over trials equal in every other axis.
SCALING_AXES = ("data.size", "model.size", "train.steps", "train.flops", "seed")
# Axes whose values are different models: the laws are fitted to each value's trials separately, drawn on one plot.
GROUP_AXES = ("model.family", "model.arch")
FORBIDDEN = {"eval.extractor": "every trial of a study must use one feature extractor (never mix them)",
             "name": "trials are named by the study", "tracking.uri": "a study tracks to one store",
             "tracking.experiment": "a study tracks to one experiment"}


class OperatingPoint(Strict):
    data_size: int | None = Field(None, ge=1)  # unique examples D0 of the verdict; None: the grid's largest data size
    flops: float | None = Field(None, gt=0)  # compute budget C0 of the verdict; None: the largest trial's FLOPs


class FitConfig(Strict):
    bootstrap: int = Field(200, ge=10)  # refits on resampled trials for the intervals
    level: float = Field(0.9, gt=0, lt=1)  # interval coverage
    max_extrapolation: float = Field(4.0, ge=1)  # predictions at most this factor beyond the observed range
    data_constrained: Literal["auto", "on", "off"] = "auto"  # Muennighoff et al. 2023 surface (R* fitted) as a
    #                                                          candidate beside L(C, D); auto: if some epochs > 1
    seed: int = 0  # bootstrap resampling seed


class Costs(Strict):
    """Prices of the two arms, in any one currency: the verdict then says what the next `spend` buys."""

    device_hour: float | None = Field(None, gt=0)  # one trial's device (a GPU, or its CPU worker) for an hour
    per_example: float | None = Field(None, gt=0)  # one more unique training example (text: token)
    currency: str = ""  # printed after amounts, e.g. EUR
    spend: float = Field(1000, gt=0)  # the amount the price line spends


class Resources(Strict):
    cpus_per_trial: float = Field(1, gt=0)  # Ray packs trials by these; torch uses this many threads
    gpus_per_trial: float = Field(0, ge=0)


class GpuProbe(Strict):
    """Without a train.gpus axis, the study measures the GPU arm itself: the operating model (the grid's largest
    planned compute) trained `steps` steps on 1 and on `processes` processes, after the grid."""

    enabled: bool = True
    steps: int = Field(40, ge=4)  # throughput is the second half's
    processes: int = Field(2, ge=2)


class StudyConfig(Strict):
    name: str = "study"
    base: str | None = None  # run config YAML the trials start from, relative to the study file, or a preset name
    run: dict[str, Any] = {}  # run-config keys set on top of `base` (nested, as in a run config)
    axes: dict[str, list[Any]]  # axis -> values; the grid is their product, in this order
    family_settings: dict[str, dict[str, Any]] = Field(
        {}, description="model.family -> run-config keys (nested) set on that family's trials after the axes, e.g. "
        "{gan: {train: {lr_g: 2e-4}}, ddpm: {eval: {sampling_steps: 50}}}: a study over model.family gives each "
        "family its own settings")
    metric: str = "fid_fmnist"  # lower-is-better metric the laws are fitted to
    metric_at: Literal["best", "final"] = "best"  # best: each trial's best checkpoint of its eval.every curve (as a
    #                                               practitioner early-stops); final: its last step
    operating_point: OperatingPoint = OperatingPoint()
    fit: FitConfig = FitConfig()
    resources: Resources = Resources()
    costs: Costs | None = None  # prices of data and device time; None: no price line
    verify: bool = False  # also run 2x data and 2x compute at the operating point, and compare with the prediction
    gpu_probe: GpuProbe = GpuProbe()


@dataclass
class Trial:
    id: str
    axes: dict[str, Any]  # axis -> value of this trial
    config: RunConfig
    role: str = "grid"  # "grid": a point of the axes' product; "verify": a verdict arm run to check its prediction


def _slug(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    if "/" in text:  # a run folder (init_from): its name is enough
        text = Path(text.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9.+-]", "_", text)


def _known_key(key: str) -> bool:
    """A run-config key of some family (model/train/eval sections differ by family)."""
    parts = key.split(".")
    roots: list[Any] = [getattr(f, f"{parts[0]}_config") for f in FAMILIES.values()] if parts[0] in SECTIONS \
        else [RunConfig]
    for model in roots:
        for part in parts[1:] if parts[0] in SECTIONS else parts:
            fields = getattr(model, "model_fields", None)
            if not fields or part not in fields:
                break
            model = fields[part].annotation
        else:
            return True
    return False


def load_study(path: str | Path) -> tuple[StudyConfig, dict[str, Any]]:
    """The study config (a file, or a shipped preset by name) and its base run config as a raw dict (base file +
    `run` keys); the base is a file relative to the study file, or a shipped run-config preset by name."""
    path = resolve_preset(path, "study")
    try:
        study = StudyConfig.model_validate(read_yaml_mapping(path, "study"))
    except ValidationError as e:
        raise GenscaleError(_format_error(e, str(path))) from None
    base = read_yaml_mapping(resolve_preset(study.base, folder=path.parent), "base run config") if study.base else {}
    _merge(base, copy.deepcopy(study.run))
    base["name"] = study.name
    return study, base


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def expand_grid(study: StudyConfig, base: dict[str, Any], origin: str = "study") -> list[Trial]:
    """One Trial per point of the axes' product; axis names and values are checked here."""
    if not study.axes:
        raise GenscaleError(f"{origin}: 'axes' is empty; give at least one axis with values")
    keys = {}
    for axis, values in study.axes.items():
        key = ALIASES.get(axis, axis)
        if key in FORBIDDEN:
            raise GenscaleError(f"{origin}: axis '{axis}' cannot vary: {FORBIDDEN[key]}")
        if key != "train.flops" and not _known_key(key):
            raise GenscaleError(f"{origin}: unknown axis '{axis}' (use data.size, model.size, train.steps, "
                                "train.flops, seed, init_from, or another run-config key such as train.lr_d)")
        if not values:
            raise GenscaleError(f"{origin}: axis '{axis}' has no values")
        if len(set(map(str, values))) != len(values):
            raise GenscaleError(f"{origin}: axis '{axis}' repeats a value: {values}")
        keys[axis] = key
    if "train.steps" in keys.values() and "train.flops" in keys.values():
        raise GenscaleError(f"{origin}: give train.steps or train.flops as an axis, not both")
    short = [a.split(".")[-1] for a in study.axes]  # trial ids name axes by their last part, unless two share it
    labels = {a: s if short.count(s) == 1 else a for a, s in zip(study.axes, short, strict=True)}
    trials = []
    for i, point in enumerate(itertools.product(*study.axes.values())):
        raw = copy.deepcopy(base)
        axes = dict(zip(study.axes, point, strict=True))
        for axis, value in axes.items():
            if keys[axis] == "train.flops":
                if not isinstance(value, int | float) or value <= 0:
                    hint = ""
                    if isinstance(value, str) and re.fullmatch(r"[0-9.]+e[0-9]+", value.strip()):
                        hint = f" (YAML reads {value} as text: write {value.replace('e', 'e+')})"
                    raise GenscaleError(f"{origin}: axis 'train.flops': {value!r} is not a positive number{hint}")
                continue  # resolved to steps by create_study, once the model is known
            set_nested(raw, keys[axis].split("."), value, f"{origin}: axis '{axis}'")
        family = raw.get("model", {}).get("family", "gan")
        if family in study.family_settings:
            _merge(raw, copy.deepcopy(study.family_settings[family]))
        trial_id = f"t{i:03d}-" + "-".join(f"{labels[a]}={_slug(v)}" for a, v in axes.items())
        raw["name"] = f"{study.name}/{trial_id}"
        try:
            cfg = RunConfig.model_validate(raw)
        except ValidationError as e:
            raise GenscaleError(_format_error(e, f"{origin}: trial {trial_id}")) from None
        trials.append(Trial(trial_id, axes, cfg))
    return trials


def check_metric(study: StudyConfig, trials: list[Trial], origin: str = "study") -> None:
    for t in trials:
        produced = family_of(t.config).produced_metrics(t.config)
        if study.metric not in produced:
            extractor = getattr(t.config.eval, "extractor", None)
            raise GenscaleError(f"{origin}: metric '{study.metric}' is not produced by trial {t.id} "
                                f"({t.config.model.family}{f' with {extractor}' if extractor else ''}: "
                                f"{', '.join(sorted(produced))})")
        if produced[study.metric] != "lower":
            lower = sorted(k for k, v in produced.items() if v == "lower")
            raise GenscaleError(f"{origin}: metric '{study.metric}' is not a lower-is-better quality metric; scaling "
                                f"laws are fitted to one of {', '.join(lower)}")
        if not t.config.eval.on_train_end:
            raise GenscaleError(f"{origin}: eval.on_train_end must be true: trials are evaluated as they end")


def check_data_sizes(trials: list[Trial], full_size: int, origin: str = "study") -> None:
    for t in trials:
        size = t.config.data.size
        if size is not None and size > full_size:
            raise GenscaleError(f"{origin}: trial {t.id}: data.size {size} is larger than the dataset's "
                                f"{full_size} training examples")
