"""A search space: a mapping from a dotted config key to its distribution, read from YAML and checked against the
run config before any trial trains.

    train.lr_g: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}
    model.loss: {type: categorical, choices: [ns, hinge]}
    train.batch_size: {type: int, low: 32, high: 128, step: 32}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from genscale.config import RunConfig, config_with, read_yaml_mapping
from genscale.errors import GenscaleError
from genscale.sections import Strict


class FloatParam(Strict):
    type: Literal["float"]
    low: float = Field(description="lowest value")
    high: float = Field(description="highest value")
    log: bool = Field(False, description="sample uniformly in log space (learning rates)")
    step: float | None = Field(None, description="a grid step from low (not with log)")

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        if not self.low < self.high or (self.log and self.low <= 0) or (self.log and self.step is not None):
            raise ValueError("needs low < high, low > 0 with log, and no step with log")
        return self


class IntParam(Strict):
    type: Literal["int"]
    low: int = Field(description="lowest value")
    high: int = Field(description="highest value (included)")
    log: bool = Field(False, description="sample uniformly in log space (widths)")
    step: int = Field(1, description="a grid step from low (1 with log)", ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        if not self.low < self.high or (self.log and (self.low <= 0 or self.step != 1)):
            raise ValueError("needs low < high, and low > 0 and step 1 with log")
        return self


class CategoricalParam(Strict):
    type: Literal["categorical"]
    choices: list[str | int | float | bool | None] = Field(min_length=1, description="the values to choose from")


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]  # noqa: UP007
_PARAM = TypeAdapter(Param)


def read_space(raw: dict[str, Any], origin: str) -> dict[str, Param]:
    """Validate a {dotted key: distribution} mapping; `origin` names it in errors."""
    if not raw:
        raise GenscaleError(f"{origin}: the search space is empty (e.g. train.lr: {{type: float, low: 1.0e-4, "
                            "high: 1.0e-2, log: true}})")
    space = {}
    for key, spec in raw.items():
        if not isinstance(spec, dict):
            raise GenscaleError(f"{origin}: key '{key}': expected a mapping such as {{type: float, low: 1.0e-4, "
                                "high: 1.0e-2, log: true}")
        try:
            space[str(key)] = _PARAM.validate_python(spec)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"][1:]) if len(err["loc"]) > 1 else "type"
            if err["type"] == "union_tag_invalid" or err["type"] == "union_tag_not_found":
                raise GenscaleError(f"{origin}: key '{key}': type must be float, int or categorical "
                                    f"(got {spec.get('type')!r})") from None
            msg = err["msg"].removeprefix("Value error, ")
            raise GenscaleError(f"{origin}: key '{key}'" + (f".{where}" if where and err["type"] != "value_error"
                                                            else "") + f": {msg}") from None
    return space


def load_space(path: str | None, base: RunConfig) -> dict[str, Param]:
    """The space in a YAML file (None: the family's default space), each key checked against `base`: its bounds
    (or each choice) must make a valid run config, so a misspelled key or an impossible value fails here, not in
    trial 7."""
    from genscale.families import family_of

    if path is None:
        origin = f"the {base.model.family} family's default search space"
        space = read_space(family_of(base).tune_space, origin)
    else:
        origin = str(path)
        space = read_space(read_yaml_mapping(path, "search space"), origin)
    check_space(space, base, origin)
    return space


def check_space(space: dict[str, Param], base: RunConfig, origin: str) -> None:
    for key, p in space.items():
        for value in p.choices if isinstance(p, CategoricalParam) else (p.low, p.high):
            config_with(base, {key: value}, f"{origin}: key '{key}' = {value!r}")


def suggest(trial: Any, space: dict[str, Param]) -> dict[str, Any]:
    """The trial's value of every key (an optuna Trial's suggest_*; a resumed trial gets the values it had)."""
    values = {}
    for key, p in space.items():
        if isinstance(p, FloatParam):
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            values[key] = trial.suggest_int(key, p.low, p.high, log=p.log, step=p.step)
        else:
            values[key] = trial.suggest_categorical(key, p.choices)
    return values


def value_of(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg.model_dump(mode="json")
    for part in key.split("."):
        node = node[part]
    return node


def contains(p: Param, value: Any) -> bool:
    """Whether `value` is one the distribution can give (the base config's own value becomes the first trial)."""
    if isinstance(p, CategoricalParam):
        return value in p.choices
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(p, IntParam):
        return float(value).is_integer() and p.low <= value <= p.high and (value - p.low) % p.step == 0
    return p.low <= value <= p.high


def format_params(params: dict[str, Any]) -> str:
    """'train.lr=0.01014, model.loss=ns': a trial's values in a line (floats to 4 significant digits)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def dump_space(space: dict[str, Param]) -> dict[str, Any]:
    return {k: p.model_dump(exclude_none=True) for k, p in space.items()}


def distributions(space: dict[str, Param]) -> dict[str, Any]:
    """Optuna's distribution of every key (to add a run trained outside the study as a finished trial)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    return {k: CategoricalDistribution(p.choices) if isinstance(p, CategoricalParam)
            else FloatDistribution(p.low, p.high, log=p.log, step=p.step) if isinstance(p, FloatParam)
            else IntDistribution(p.low, p.high, log=p.log, step=p.step) for k, p in space.items()}
