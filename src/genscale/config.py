"""Typed run configuration loaded from YAML, with strict keys and `--set a.b=c` overrides.

Every field says what it is for. An unknown key or a wrong type is a GenscaleError naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from genscale.errors import GenscaleError
from genscale.families import FAMILIES
from genscale.sections import (  # noqa: F401  (re-exported: the config's names in one place)
    IMAGE_SOURCES,
    TEXT_SOURCES,
    DataConfig,
    Float,
    GateConfig,
    Int,
    Strict,
    Threshold,
    TrackingConfig,
)


def _section(kind: str) -> Any:
    """The union of every family's `kind` section (model/train/eval), discriminated by its `family` tag."""
    members = tuple(getattr(f, f"{kind}_config") for f in FAMILIES.values())
    return Annotated[Union[members], Field(discriminator="family")]  # noqa: UP007  (a runtime tuple of types)


ModelSection, TrainSection, EvalSection = _section("model"), _section("train"), _section("eval")


def _default(kind: str, family: str = "gan") -> Any:
    return Field(default_factory=lambda: getattr(FAMILIES[family], f"{kind}_config")(),
                 description=f"model.family's own {kind} section")


class RunConfig(Strict):
    """One run: data, the model family and its settings, training, evaluation, the quality gate, tracking.

    `model.family` selects the `model`, `train` and `eval` sections (families/<name>.py); a key another family
    reads is an error naming the key, never silently ignored."""

    name: str = Field("run", description="run name in the tracking store")
    data: DataConfig = Field(default_factory=DataConfig, description="what to train on")
    model: ModelSection = _default("model")
    train: TrainSection = _default("train")
    eval: EvalSection = _default("eval")
    gate: GateConfig = Field(default_factory=GateConfig, description="metric name -> bound, e.g. {fid_fmnist: "
                             "{max: 40}}, {fid_fmnist: {max_over_floor: 3}} or {val_loss: {max: 1.6}}; `register: "
                             "NAME` registers a run that passes as a version of model NAME")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="where the run is tracked")

    @model_validator(mode="before")
    @classmethod
    def _family_sections(cls, raw: Any) -> Any:
        """Tag the train and eval sections with model.family (gan when a config names none), so each is validated
        as that family's section."""
        if not isinstance(raw, dict):
            return raw
        model = raw.get("model", {})
        if isinstance(model, dict):
            family = model.get("family", "gan")
            raw = {**raw, "model": {**model, "family": family}}
        else:
            family = getattr(model, "family", "gan")
        for kind in ("train", "eval"):
            section = raw.get(kind, {})
            if isinstance(section, dict):
                raw[kind] = {**section, "family": family}
            elif getattr(section, "family", family) != family:
                raw[kind] = {**section.model_dump(), "family": family}
        return raw

    @model_validator(mode="after")
    def _data_of_family(self) -> RunConfig:
        source, family = self.data.source, FAMILIES[self.model.family]
        wants, own, holds, other = ("images", IMAGE_SOURCES, "text", TEXT_SOURCES) if family.data_kind == "image" \
            else ("text", TEXT_SOURCES, "images", IMAGE_SOURCES)
        if source in other:
            raise ValueError(f"data.source '{source}' holds {holds}; the {family.name} family trains on {wants} "
                             f"({', '.join(own)}, or a stored {family.data_kind} dataset)")
        return self


SECTIONS = ("model", "train", "eval")


def _owners(section: str, key: str) -> list[str]:
    """The families whose `section` has `key`."""
    return [n for n, f in FAMILIES.items() if key in getattr(f, f"{section}_config").model_fields]


def _format_error(e: ValidationError, origin: str) -> str:
    err = e.errors()[0]
    loc, family = [str(p) for p in err["loc"]], None
    if len(loc) >= 2 and loc[0] in SECTIONS and loc[1] in FAMILIES:  # the union's tag: not a key the user wrote
        family = loc.pop(1)
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        owners = _owners(loc[0], loc[1]) if len(loc) == 2 and loc[0] in SECTIONS else []
        if owners:
            return (f"{origin}: unknown key '{key}' for the {family} family (it is a setting of "
                    f"{' and '.join(owners)}; model.family selects the settings)")
        return f"{origin}: unknown key '{key}'"
    if err["type"] == "union_tag_invalid":
        return f"{origin}: key '{key}.family': unknown family {err['input'].get('family')!r} " \
               f"(choose {', '.join(FAMILIES)})"
    if err["type"] == "value_error" and isinstance(err.get("input"), dict):  # a whole section's own check
        return f"{origin}: key '{key}': {err['msg'].removeprefix('Value error, ')}"
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


def saved_config(raw: dict[str, Any], origin: str) -> RunConfig:
    """A run config genscale wrote (a run folder's config.yaml, a study plan). Those written before the sections
    became per-family hold every family's settings; the keys this run's family does not read are dropped (they were
    its defaults then, unread), as are nulls where a family now has its own default (train.betas: null meant the
    family's betas); anything else must validate as usual."""
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    family = FAMILIES.get(model.get("family", "gan"))
    if family is not None:
        raw = dict(raw)
        for section in SECTIONS:
            if isinstance(raw.get(section), dict):
                own = getattr(family, f"{section}_config").model_fields
                raw[section] = {k: v for k, v in raw[section].items() if (k in own or not _owners(section, k))
                                and not (v is None and k in own and own[k].default is not None)}
    return config_from_dict(raw, origin)


def config_with(cfg: RunConfig, settings: dict[str, Any], origin: str) -> RunConfig:
    """A copy of `cfg` with dotted keys set ({'eval.n_samples': 100}), validated; `origin` names them in errors."""
    raw = cfg.model_dump(mode="json")
    for key, value in settings.items():
        set_nested(raw, key.split("."), value, origin)
    return config_from_dict(raw, origin)


PRESETS = Path(__file__).with_name("presets")  # shipped run configs and studies (package data of the wheel)


def _preset_kind(stem: str) -> str:
    return "study" if stem.startswith("study-") else "run config"


def preset_names(kind: str) -> list[str]:
    """The shipped presets of a kind ("run config" or "study"), by the name a command takes."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml") if _preset_kind(p.stem) == kind)


def resolve_preset(path: str | Path, kind: str = "run config", folder: Path = Path(".")) -> Path:
    """The YAML a command was given: an existing file (relative to `folder`) wins, else a shipped preset named `path`
    (`dcgan-fmnist`, with or without .yaml), so an installed genscale needs no checkout; neither is a GenscaleError
    listing the presets."""
    path = folder / path
    if path.exists():
        return path
    preset = PRESETS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if path.parent == folder and preset.is_file() and _preset_kind(preset.stem) == kind:
        return preset
    raise GenscaleError(f"{path}: no such file, nor a shipped {kind} preset (presets: {', '.join(preset_names(kind))})")


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


def run_config_schema() -> dict[str, Any]:
    """The JSON schema of a run-config file as users write it (`genscale config schema`).

    pydantic's own schema discriminates the model/train/eval sections by a `family` key inside each, which a config
    never writes (model.family chooses them, gan when absent), so a section valid for several families matched
    each of its oneOf branches and no shipped config validated. Here each section is chosen the config's way: one
    if/then per family on model.family."""
    schema = RunConfig.model_json_schema()
    props = schema["properties"]
    for kind in SECTIONS:
        props[kind] = {"type": "object", "description": props[kind]["description"]}
    props["model"]["properties"] = {"family": {"enum": list(FAMILIES), "default": "gan",
                                               "description": "the model family; selects the model, train and eval "
                                               "sections' settings"}}
    branches = []
    for name, family in FAMILIES.items():
        chosen: dict[str, Any] = {"properties": {"model": {"properties": {"family": {"const": name}}}}}
        if name != "gan":  # gan is the family of a config that names none
            chosen["required"] = ["model"]
            chosen["properties"]["model"]["required"] = ["family"]
        branches.append({"if": chosen, "then": {"properties": {
            kind: {"$ref": f"#/$defs/{getattr(family, f'{kind}_config').__name__}"} for kind in SECTIONS}}})
    schema["allOf"] = branches
    return schema


def config_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML, every default filled, in field order: what a run saves as its config.yaml (and
    `genscale config show` prints); load_config reads it back to the same RunConfig."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (a file, or a shipped preset by name), apply `--set` overrides, validate strictly."""
    path = resolve_preset(path)
    return config_from_dict(apply_overrides(read_yaml_mapping(path), list(overrides)), str(path))
