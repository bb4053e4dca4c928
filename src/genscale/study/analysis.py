"""From trial results to fitted laws and a verdict: does 2x data or 2x compute buy more at the operating point?

Laws fitted (lower-is-better metric L; D unique examples, C counted training FLOPs, N parameters, S examples
processed = steps x examples per step):
  L(C, D) = E + A/C^alpha + B/D^beta          Hoffmann et al. 2022's form over compute and data (no repetition)
  L([N,] D, S) = E + [A/N^alpha] + B/D'^beta  Muennighoff et al. 2023: D' the effective data of D unique examples
                                              seen S/D times (R* fitted), so more steps on small data saturate
  L(N, D)                                     when model size varies
  L(D), L(C)                                  one-axis laws, at the largest compute / the largest data of the grid
  L(N, S) with C = k N S                      the compute-optimal split of a budget between model size and data
The verdict's surface is one of the first two, chosen by its error on held-out trials (the largest-compute trial at
each data size, kept out of the fit), not by R^2; it is then refitted to every trial. E is bounded below by the
metric's real floor (floor.json: real-vs-real FID, 0 for a loss). Intervals come from the bootstrap of fit.py (seed
repeats resampled within their cell); a parameter that sits on a bound in the fit and its refits is "not identified".

A study whose model.family (or model.arch) axis takes several values compares different models: each value's trials
are a group with its own laws, verdict and held-out check (`analyse_groups`), and their costs are set side by side.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import brentq

from genscale.paths import atomic_write_bytes, read_json
from genscale.study.fit import (
    R_STAR_DEFAULT,
    Law,
    PowerLaw,
    bootstrap,
    fit_data_constrained_surface,
    fit_power_law,
    interval,
    law_from_dict,
    not_identified,
    prediction_interval,
)

MIN_POINTS = 4  # fewer trials than this cannot pin a law with an irreducible term
HOLDOUT_BOOT = 50  # refits behind the held-out trials' prediction intervals
VALIDATED_SHARE = 0.75  # held-out (or verify) trials inside their prediction intervals for "validated"
MAP_GRID = 40  # decision-map resolution per axis


def column(p: dict[str, Any], key: str) -> float:
    """A law input of a trial result: C, D, N, or S (examples processed)."""
    return float(p["examples_seen"] if key == "S" else p[key])


def _xy(points: list[dict[str, Any]], inputs: tuple[str, ...], metric: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([[column(p, k) for k in inputs] for p in points], dtype=float).reshape(len(points), len(inputs))
    return x, np.array([p["metrics"][metric] for p in points], dtype=float)


def cells_of(points: list[dict[str, Any]]) -> np.ndarray:
    """One id per trial; trials equal in every axis but the seed share a cell (their spread is seed noise)."""
    keys = [json.dumps({k: v for k, v in p["axes"].items() if k not in ("seed", "train.seed")}, sort_keys=True,
                       default=str) for p in points]
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return np.array([ids[k] for k in keys])


def _law_dict(law: Law, boots: list[Law] | None, level: float) -> dict[str, Any]:
    out = law.to_dict()
    hidden = not_identified(law, boots or [])
    out["not_identified"] = hidden
    if boots:
        out["intervals"] = {k: None if k in hidden else interval(np.array([b.params()[k] for b in boots]), level)
                            for k in law.params()}
    return out


def _usable(points: list[dict[str, Any]], inputs: tuple[str, ...], metric: str, min_points: int) -> str | None:
    """Why a law over `inputs` cannot be fitted to these trials, or None."""
    if len(points) < min_points:
        return f"{len(points)} trials; needs at least {min_points}"
    x, y = _xy(points, inputs, metric)
    for i, a in enumerate(inputs):
        if len(np.unique(x[:, i])) < 2:
            return f"{a} takes one value"
    if (y <= 0).any() or not np.isfinite(y).all():
        return f"{metric} is not positive and finite in every trial"
    return None


def _fit(points: list[dict[str, Any]], axes: tuple[str, ...], metric: str, fit_cfg: dict[str, Any], floor: float = 0.0,
         min_points: int = MIN_POINTS) -> tuple[PowerLaw, list[Law]] | str:
    """A power law over `axes` with its bootstrap (seed repeats resampled in their cells); a reason when it cannot."""
    why = _usable(points, axes, metric, min_points)
    if why:
        return why
    x, y = _xy(points, axes, metric)
    law = fit_power_law(x, y, axes, e_floor=floor)
    return law, bootstrap(x, y, law, cells=cells_of(points), n_boot=fit_cfg["bootstrap"], seed=fit_cfg["seed"])


@dataclass
class Form:
    """A candidate surface for the verdict: its name, the trial columns it reads, and its fitter."""

    name: str
    inputs: tuple[str, ...]
    fitter: Callable[[np.ndarray, np.ndarray, float], Law]
    n_params: int


def candidate_forms(points: list[dict[str, Any]], mode: str) -> tuple[list[Form], str | None]:
    """L(C, D) always; the data-constrained surface unless switched off (auto: when some trial repeats its data).
    Returns the forms and why the data-constrained one is left out (None when it is in)."""
    forms = [Form("L(C, D)", ("C", "D"), lambda x, y, f: fit_power_law(x, y, ("C", "D"), e_floor=f), 5)]
    if mode == "off":
        return forms, "switched off (fit.data_constrained: off)"
    if mode == "auto" and not any(p["epochs"] > 1 for p in points):
        return forms, "no trial repeats its data (every epochs <= 1)"
    inputs = ("N", "D", "S") if len({p["N"] for p in points}) > 1 else ("D", "S")
    name = f"L({', '.join(inputs)}) data-constrained"
    forms.append(Form(name, inputs, lambda x, y, f: fit_data_constrained_surface(x, y, inputs, e_floor=f),
                      4 + 2 * (len(inputs) == 3)))
    return forms, None


def holdout_indices(points: list[dict[str, Any]]) -> list[int]:
    """The largest-compute trials (every seed) at each data size that has at least two compute levels."""
    out = []
    for d in sorted({p["D"] for p in points}):
        at_d = [i for i, p in enumerate(points) if p["D"] == d]
        top = max(points[i]["C"] for i in at_d)
        if len({points[i]["C"] for i in at_d}) >= 2:
            out += [i for i in at_d if points[i]["C"] == top]
    return out


def _predict_new(law: Law, x_fit: np.ndarray, y_fit: np.ndarray, cells: np.ndarray, x_new: np.ndarray,
                 fit_cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, lo, hi) for new trials at x_new: the refits' spread plus the trial noise of the fit's residuals."""
    boots = bootstrap(x_fit, y_fit, law, cells=cells, n_boot=HOLDOUT_BOOT, seed=fit_cfg["seed"])
    residuals = np.log(y_fit) - np.log(law.predict(x_fit))
    lo, hi = prediction_interval(law, boots, x_new, fit_cfg["level"], residuals=residuals)
    return law.predict(x_new), lo, hi


def held_out_check(points: list[dict[str, Any]], forms: list[Form], metric: str, fit_cfg: dict[str, Any],
                   floor: float) -> dict[str, Any]:
    """Fit every form without the held-out trials and predict them; the smaller held-out log error wins."""
    held = holdout_indices(points)
    rest = [p for i, p in enumerate(points) if i not in held]
    out: dict[str, Any] = {"rule": "the largest-compute trial (every seed) at each data size with two or more "
                                   "compute levels, kept out of the fit", "trials": [], "forms": {}}
    if not held:
        out["reason"] = "no data size has two compute levels, so no trial can be held out"
        return out
    out["held_out"] = [points[i]["trial"] for i in held]
    for form in forms:
        why = _usable(rest, form.inputs, metric, max(MIN_POINTS, form.n_params + 1))
        if why:
            out["forms"][form.name] = {"reason": f"not fitted without the held-out trials ({why})"}
            continue
        x_fit, y_fit = _xy(rest, form.inputs, metric)
        x_new, y_new = _xy([points[i] for i in held], form.inputs, metric)
        law = form.fitter(x_fit, y_fit, floor)
        pred, lo, hi = _predict_new(law, x_fit, y_fit, cells_of(rest), x_new, fit_cfg)
        errors = np.log(pred) - np.log(y_new)
        out["forms"][form.name] = {
            "rmse_log": float(np.sqrt(np.mean(errors**2))), "inside": int(((lo <= y_new) & (y_new <= hi)).sum()),
            "trials": [{"trial": points[i]["trial"], "measured": float(m), "predicted": float(f), "interval":
                        [float(a), float(b)], "log_error": float(e), "inside": bool(a <= m <= b)}
                       for i, m, f, a, b, e in zip(held, y_new, pred, lo, hi, errors, strict=True)]}
    fitted = {k: v for k, v in out["forms"].items() if "rmse_log" in v}
    if fitted:
        out["chosen"] = min(fitted, key=lambda k: fitted[k]["rmse_log"])
        out["trials"] = fitted[out["chosen"]]["trials"]
        out["sentence"] = (f"Held out of the fit: {out['rule']} ({len(held)} trials), predicted by each form fitted "
                           f"to the other {len(rest)}; the form with the smaller held-out log error, {out['chosen']}, "
                           "is refitted to every trial for the verdict. Rows: that form's predictions.")
    return out


@dataclass
class Surface:
    """The verdict's law with what maps a (compute, data) point onto its inputs: S = C / (k N0) at the operating
    model's N0 (more compute = more steps of that model)."""

    name: str
    law: Law
    boots: list[Law]
    n0: float
    k: float  # FLOPs per parameter per example processed, median over the trials
    hidden: tuple[str, ...] = ()  # the law's parameters that are not identified (on a bound in fit and refits)

    def inputs_at(self, c: np.ndarray, d: np.ndarray, n: float | None = None) -> np.ndarray:
        """Law inputs at compute c and data d for a model of n parameters (default: the operating model's)."""
        n = n or self.n0
        c, d = np.broadcast_arrays(np.asarray(c, dtype=float), np.asarray(d, dtype=float))
        cols = {"C": c, "D": d, "N": np.full_like(c, n), "S": c / (self.k * n)}
        return np.column_stack([cols[k].ravel() for k in self.law.inputs])

    def predict(self, c: np.ndarray, d: np.ndarray, law: Law | None = None, n: float | None = None) -> np.ndarray:
        c = np.asarray(c, dtype=float)
        return (law or self.law).predict(self.inputs_at(c, d, n)).reshape(np.broadcast(c, np.asarray(d)).shape)


def surface_of(analysis: dict[str, Any]) -> Surface | None:
    """The verdict's surface rebuilt from analysis.json (without its refits), or None when there is none."""
    ref = analysis.get("verdict", {}).get("surface")
    if not ref or ref["name"] not in analysis.get("laws", {}):
        return None
    return Surface(ref["name"], law_from_dict(analysis["laws"][ref["name"]]), [], n0=ref["n0"], k=ref["k"])


def _fmt(x: float) -> str:
    x = x + 0.0  # no "-0"
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2g}"


def within_reach(value: float, lo: float, hi: float, factor: float) -> bool:
    """A point and its 2x lie within `factor` of the observed range [lo, hi]: what a verdict may predict."""
    return lo / factor <= value and 2 * value <= hi * factor


def _arm_params(law: Law, arm: str) -> tuple[str, ...]:
    """The parameters a 2x-data or 2x-compute change rests on."""
    if law.form == "power":
        axis = "D" if arm == "data" else "C"
        return (f"A[{axis}]", f"alpha[{axis}]")
    return ("B", "beta", "R*")


def _change(s: Surface, base: tuple[float, float], moved: tuple[float, float], level: float, arm: str
            ) -> dict[str, Any]:
    """Predicted metric change from `base` to `moved` ((C, D) points), with its interval. The interval is "not
    identified", never a sliver like [0, 0] or [0, 6e-6], when it is narrower than 1% of the trials' noise (the fit's
    log rmse in metric units) while a parameter it rests on sits on a bound: that width is the law's shape, not
    knowledge. (A narrow interval with its parameters off their bounds is a real finding: e.g. more steps on fully
    repeated data change nothing.)"""
    def delta(law: Law) -> float:
        return float(s.predict(moved[0], moved[1], law) - s.predict(base[0], base[1], law))

    value = delta(s.law)
    values = np.array([delta(b) for b in s.boots])
    lo, hi = interval(values, level)
    at = abs(float(s.predict(*base)))
    noise = at * s.law.rmse_log if math.isfinite(s.law.rmse_log) else 0.0
    pinned = any(s.law.at_bound.get(p) or p in s.hidden for p in _arm_params(s.law, arm))
    identified = hi - lo > max(0.01 * noise, 1e-9 * at) or not pinned
    return {"change": value, "interval": [lo, hi] if identified else None, "identified": identified,
            "at": float(s.predict(*base))}


def _phrase(ch: dict[str, Any], metric: str) -> str:
    word = "lower" if ch["change"] <= 0 else "raise"
    if ch["interval"] is None:
        return (f"change {metric} by {_fmt(ch['change'])}, not identified (a parameter it rests on sits on a bound, "
                "so its interval would be narrower than the trials' noise: these trials show no measurable effect)")
    lo, hi = sorted(-v if word == "lower" else v for v in ch["interval"])
    return f"{word} {metric} by {_fmt(abs(ch['change']))} [{_fmt(lo)}, {_fmt(hi)}]"


def verdict(s: Surface, d0: float, c0: float, metric: str, fit_cfg: dict[str, Any], unit: str = "unique examples",
            gpus: dict[str, Any] | None = None) -> dict[str, Any]:
    """Predicted change of the metric from 2x unique data and from 2x compute at (D0, C0), and which wins; and what
    2x GPUs at equal wall time buys, from the measured scaling efficiency `gpus` (`gpu_scaling`)."""
    level, factor = fit_cfg["level"], fit_cfg["max_extrapolation"]
    (c_lo, c_hi), (d_lo, d_hi) = _range(s, "C"), _range(s, "D")
    problems = []
    if not within_reach(d0, d_lo, d_hi, factor):
        problems.append(f"D0 = {d0:.0f} (and 2x) lies more than {factor:g}x outside the observed D "
                        f"[{d_lo:.0f}, {d_hi:.0f}]")
    if not within_reach(c0, c_lo, c_hi, factor):
        problems.append(f"C0 = {c0:.3g} (and 2x) lies more than {factor:g}x outside the observed C "
                        f"[{c_lo:.3g}, {c_hi:.3g}]")
    if problems:
        return {"decision": "out of range", "sentence": "No verdict: " + "; ".join(problems) +
                ". Add trials nearer the operating point or set operating_point in the study.", "D0": d0, "C0": c0}
    data = _change(s, (c0, d0), (c0, 2 * d0), level, "data")
    compute = _change(s, (c0, d0), (2 * c0, d0), level, "compute")
    if not (data["identified"] and compute["identified"]):
        decision = "not identified"
    elif data["interval"][1] < compute["interval"][0]:
        decision = "data"
    elif compute["interval"][1] < data["interval"][0]:
        decision = "compute"
    else:
        decision = "inconclusive"
    pct = int(round(level * 100))
    sentence = (f"At {d0:,.0f} {unit} and {c0:.3g} FLOPs (predicted {metric} {_fmt(data['at'])}, law {s.name}), "
                f"doubling the data is predicted to {_phrase(data, metric)}; doubling compute to "
                f"{_phrase(compute, metric)} ({pct}% bootstrap intervals). ")
    sentence += {"data": "More data buys more quality here.",
                 "compute": "More compute buys more quality here.",
                 "inconclusive": "Inconclusive: the intervals overlap.",
                 "not identified": "No decision: " + " and ".join(
                     name for name, ch in (("the data arm", data), ("the compute arm", compute))
                     if not ch["identified"]) + " is not identified by these trials (trials where it matters — "
                   "longer training, more sizes — would identify it)."}[decision]
    return {"decision": decision, "sentence": sentence, "D0": d0, "C0": c0, "law": s.name, "data_2x": data,
            "compute_2x": compute,
            "gpus_2x": gpus_arm(s, d0, c0, metric, level, gpus)}


GPU_AXIS = "train.gpus"


def gpu_scaling(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Measured data-parallel scaling of the trials of a train.gpus axis: every trial's world size and throughput
    (examples per second), its efficiency against the world-size-1 trial equal to it in every other axis
    (throughput ratio / world size), and the efficiency of doubling the world (g -> 2g) over all such pairs."""
    def rest(r: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in r["axes"].items() if k != GPU_AXIS}, sort_keys=True, default=str)

    measured = [r for r in results if r.get("examples_per_second") and r.get("world_size")]
    by_config: dict[str, dict[int, dict[str, Any]]] = {}
    for r in measured:
        by_config.setdefault(rest(r), {})[int(r["world_size"])] = r
    rows, doubling = [], []
    for sizes in by_config.values():
        single = sizes.get(1)
        for g, r in sorted(sizes.items()):
            rows.append({"trial": r["trial"], "world_size": g,
                         "config": " ".join(f"{k}={v}" for k, v in r["axes"].items() if k != GPU_AXIS),
                         "examples_per_second": r["examples_per_second"],
                         "step_seconds": r.get("step_seconds"), "mfu": r.get("mfu"),
                         "efficiency": r["examples_per_second"] / (g * single["examples_per_second"])
                         if single else None})
            if 2 * g in sizes:
                doubling.append({"from": g, "trial": r["trial"], "to_trial": sizes[2 * g]["trial"],
                                 "efficiency": sizes[2 * g]["examples_per_second"] / (2 * r["examples_per_second"])})
    effs = [d["efficiency"] for d in doubling]
    return {"trials": rows, "doubling": doubling,
            "efficiency": {"median": float(np.median(effs)), "low": min(effs), "high": max(effs), "pairs": len(effs)}
            if effs else None}


def gpus_arm(s: Surface, d0: float, c0: float, metric: str, level: float, gpus: dict[str, Any] | None
             ) -> dict[str, Any]:
    """2x GPUs at equal wall time = the compute of 2 e x C0 devices-seconds, e the measured efficiency of doubling
    the world for this model and batch; its interval spans the law's bootstrap at the lowest and highest measured
    e. Nothing measured: a note, no number (no assumed efficiency of 1)."""
    eff = (gpus or {}).get("efficiency")
    probe = (gpus or {}).get("probe")
    if probe and "error" in probe:
        return {"note": f"not measured: the study's GPU probe failed ({probe['error']}), so no number is given"}
    if not eff:
        return {"note": "not measured: this study has no train.gpus trials (add e.g. `train.gpus: [1, 2]` to its "
                        "axes), so no number is given; at equal wall time 2x GPUs buys at most what 2x compute buys "
                        "above, less by this hardware's data-parallel efficiency"}
    at = {k: _change(s, (c0, d0), (2 * eff[k] * c0, d0), level, "compute") for k in ("median", "low", "high")}
    change = at["median"]
    bounds = [v for k in ("low", "high") if at[k]["interval"] for v in at[k]["interval"]]
    change = {**change, "interval": [min(bounds), max(bounds)] if bounds and change["identified"] else None}
    spread = (f"{eff['median']:.2f} [{eff['low']:.2f}, {eff['high']:.2f}]" if eff["pairs"] > 1
              else f"{eff['median']:.2f} (one pair)")
    where = (f"the study's own probe ({probe['steps']} steps of {probe['of_trial']} on 1 and 2 processes, "
             f"{probe['cost_seconds']:.0f} s)" if probe else
             f"{eff['pairs']} train.gpus trial pair{'s' if eff['pairs'] > 1 else ''}")
    return {**change, "efficiency": eff, "speedup": 2 * eff["median"],
            "note": f"measured scaling efficiency of doubling the processes {spread} from {where}, i.e. "
                    f"{2 * eff['median']:.2f}x the compute; predicted to {_phrase(change, metric)}"}


def _range(s: Surface, key: str) -> tuple[float, float]:
    """Observed range of C or D behind the surface (C from S for a data-constrained law)."""
    r = s.law.observed_range
    if key in r:
        return r[key]
    lo, hi = r["S"]
    return lo * s.k * s.n0, hi * s.k * s.n0


def price(s: Surface, d0: float, c0: float, costs: dict[str, Any], seconds_per_flop: float, metric: str,
          unit: str) -> dict[str, Any]:
    """What the next `costs.spend` (currency) buys as data or as compute at (D0, C0), and the break-even price per
    example. Device-hours from the trials' measured throughput (seconds per counted FLOP, median over trials)."""
    spend, per_example, hour = costs["spend"], costs.get("per_example"), costs.get("device_hour")
    cur = costs.get("currency") or ""
    if per_example is None or hour is None:
        return {"available": False, "reason": "set costs.per_example and costs.device_hour in the study"}
    examples = spend / per_example
    hours = spend / hour
    flops = hours * 3600 / seconds_per_flop
    at = float(s.predict(c0, d0))
    data = float(s.predict(c0, d0 + examples)) - at
    compute = float(s.predict(c0 + flops, d0)) - at

    def gap(log_p: float) -> float:  # data change at price p minus the compute change; increasing in p
        return float(s.predict(c0, d0 + spend / math.exp(log_p))) - at - compute

    lo, hi = math.log(per_example) - 30, math.log(per_example) + 30
    even = math.exp(brentq(gap, lo, hi, xtol=1e-10)) if gap(lo) < 0 < gap(hi) else None
    d_hi, c_hi = _range(s, "D")[1], _range(s, "C")[1]
    beyond = [name for name, v, top in (("data", d0 + examples, d_hi), ("compute", c0 + flops, c_hi)) if v > top]
    sentence = (f"The next {spend:,.0f} {cur}".rstrip() + f" buys {_fmt(data)} {metric} as data ({examples:,.0f} more "
                f"{unit} at {per_example:g} each) or {_fmt(compute)} {metric} as compute ({hours:,.3g} device-hours "
                f"at {hour:g}, {flops:.3g} FLOPs at the measured {1 / seconds_per_flop:.3g} FLOP/s). ")
    sentence += (f"They break even at {even:.3g} per example: data is the better buy below that price."
                 if even is not None else "No price per example makes them break even within 1e13x of the one given.")
    if beyond:
        sentence += f" ({' and '.join(beyond)} arm beyond the observed range: extrapolated.)"
    return {"available": True, "spend": spend, "currency": cur, "examples": examples, "device_hours": hours,
            "flops": flops, "data_change": data, "compute_change": compute, "break_even_per_example": even,
            "seconds_per_flop": seconds_per_flop, "sentence": sentence}


def decision_map(s: Surface, c0: float, d0: float) -> dict[str, Any]:
    """Predicted change from 2x data and from 2x compute over the observed (C, D) plane."""
    (c_lo, c_hi), (d_lo, d_hi) = _range(s, "C"), _range(s, "D")
    c = np.geomspace(c_lo, c_hi, MAP_GRID)
    d = np.geomspace(d_lo, d_hi, MAP_GRID)
    cg, dg = np.meshgrid(c, d)  # (len(d), len(c))
    base = s.predict(cg, dg)
    return {"C": c.tolist(), "D": d.tolist(), "gain_data": (s.predict(cg, 2 * dg) - base).tolist(),
            "gain_compute": (s.predict(2 * cg, dg) - base).tolist(), "C0": c0, "D0": d0}


def validation(check: dict[str, Any], chosen: str, verified: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the verdict's law predicted trials it did not see: the held-out trials and the verify trials."""
    rows = list(check.get("trials", [])) + verified
    if not rows:
        why = check.get("reason") or "; ".join(f"{k} {v['reason']}" for k, v in check.get("forms", {}).items()) \
            or "no held-out trials"
        return {"status": "not checked", "sentence": f"Not validated: {why}. Add compute levels (three or more per "
                "data size leave two after the hold-out), or set verify: true."}
    inside = sum(r["inside"] for r in rows)
    status = "validated" if inside >= math.ceil(VALIDATED_SHARE * len(rows)) else "not validated"
    med = float(np.median([abs(math.expm1(r["log_error"])) for r in rows]))
    compared = ", ".join(f"{k} {v['rmse_log']:.3g}" for k, v in check.get("forms", {}).items() if "rmse_log" in v)
    sentence = (f"{status.capitalize()}: {inside} of {len(rows)} trials the fit did not see lie inside their 90% "
                f"prediction intervals (median error {100 * med:.1f}%)")
    sentence += f"; held-out log rmse by form: {compared}; the verdict uses {chosen}." if compared else "."
    return {"status": status, "inside": inside, "checked": len(rows), "sentence": sentence}


def compute_optimal(points: list[dict[str, Any]], metric: str, c0: float, fit_cfg: dict[str, Any],
                    floor: float = 0.0) -> dict[str, Any]:
    """Hoffmann et al. 2022 eq. 4: N_opt(C) = G (C/k)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta)),
    with L(N, S) fitted over model size N and examples processed S, and C = k N S measured (k = median C/(N S))."""
    fitted = _fit(points, ("N", "examples_seen"), metric, fit_cfg, floor)
    if isinstance(fitted, str):
        return {"available": False, "reason": f"L(N, S) not fitted: {fitted}"}
    law, boots = fitted
    k = float(np.median([p["C"] / (p["N"] * p["examples_seen"]) for p in points]))

    def n_opt(m: Any) -> float:
        (a, b), (al, be) = m.A, m.alpha
        if al <= 0 or be <= 0:
            return float("nan")
        g = (al * a / (be * b)) ** (1 / (al + be))
        return g * (c0 / k) ** (be / (al + be))

    best = n_opt(law)
    lo, hi = interval(np.array([n_opt(b) for b in boots if np.isfinite(n_opt(b))] or [np.nan]),
                      fit_cfg["level"])
    return {"available": True, "law": _law_dict(law, boots, fit_cfg["level"]), "flops_per_param_example": k,
            "C0": c0, "N_opt": best, "N_opt_interval": [lo, hi], "S_opt": c0 / (k * best) if best else None}


def compare_treatments(results: list[dict[str, Any]], axes: dict[str, list[Any]], metric: str) -> dict[str, Any]:
    """For each treatment axis (not a scaling axis), the metric at each value, paired over trials that are equal in
    every other axis, and the mean paired change from the axis's first value."""
    from genscale.study.spec import SCALING_AXES

    out: dict[str, Any] = {}
    for axis, values in axes.items():
        if axis in SCALING_AXES:
            continue
        labels = [str(v) for v in values]
        rows: dict[str, dict[str, float]] = {}
        for r in results:
            if metric not in r["metrics"]:
                continue
            others = ", ".join(f"{k}={v}" for k, v in r["axes"].items() if k != axis) or "-"
            rows.setdefault(others, {})[str(r["axes"][axis])] = r["metrics"][metric]
        changes = {}
        for v in labels[1:]:
            diffs = [row[v] - row[labels[0]] for row in rows.values() if v in row and labels[0] in row]
            changes[v] = {"mean_change": float(np.mean(diffs)) if diffs else None, "pairs": len(diffs),
                          "changes": diffs}
        out[axis] = {"values": labels, "rows": rows, "baseline": labels[0], "vs_baseline": changes}
    return out


def analyse(results: list[dict[str, Any]], *, metric: str, fit_cfg: dict[str, Any], operating_data_size: int,
            operating_flops: float | None, axes: dict[str, list[Any]] | None = None, floor: float = 0.0,
            costs: dict[str, Any] | None = None, unit: str = "unique examples",
            gpu_probe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every law the trials support, the verdict at the operating point with its validation, price and decision map,
    and the compute-optimal split.

    With treatment axes (e.g. data.clean), the laws are fitted to the trials at each treatment's first value
    (a law mixes no treatments) and the treatments are compared value against value. Verify trials (role "verify")
    are kept out of every fit and compared with their predictions. With a group axis of several values (e.g.
    model.family: [gan, ddpm]) each group is analysed on its own: see `analyse_groups`."""
    from genscale.study.spec import SCALING_AXES

    group_axes = group_axes_of(axes)
    if group_axes:
        return analyse_groups(results, group_axes, metric=metric, fit_cfg=fit_cfg,
                              operating_data_size=operating_data_size, operating_flops=operating_flops,
                              axes=axes or {}, floor=floor, costs=costs, unit=unit)
    level = fit_cfg["level"]
    treatments = {a: [str(v) for v in vals] for a, vals in (axes or {}).items() if a not in SCALING_AXES}
    grid = [r for r in results if r.get("role", "grid") == "grid"]
    checks = [r for r in results if r.get("role") == "verify" and metric in r["metrics"]]
    comparisons = compare_treatments(grid, axes or {}, metric) if treatments else {}
    pts = [r for r in grid if metric in r["metrics"]
           and all(str(r["axes"].get(a)) == vals[0] for a, vals in treatments.items())]
    out: dict[str, Any] = {"metric": metric, "trials_used": len(pts), "laws": {}, "skipped": {}, "floor": floor,
                           "comparisons": comparisons, "laws_fitted_at": {a: vals[0] for a, vals in treatments.items()}}
    c0 = operating_flops or (max(p["C"] for p in pts) if pts else None)
    d0 = float(operating_data_size)
    if GPU_AXIS in (axes or {}):
        out["gpus"] = gpu_scaling(grid)
    elif gpu_probe:  # the study's own short measurement (execute.probe_gpu_scaling)
        out["gpus"] = {**gpu_scaling(gpu_probe.get("results", [])), "probe": gpu_probe}

    def record(name: str, fitted: tuple[Law, list[Law]] | str) -> tuple[Law, list[Law]] | None:
        if isinstance(fitted, str):
            out["skipped"][name] = fitted
            return None
        out["laws"][name] = _law_dict(*fitted, level)
        return fitted

    forms, dc_reason = candidate_forms(pts, fit_cfg["data_constrained"])
    check = held_out_check(pts, forms, metric, fit_cfg, floor)
    out["holdout"] = check
    surfaces: dict[str, tuple[Law, list[Law]]] = {}
    for form in forms:
        why = _usable(pts, form.inputs, metric, max(MIN_POINTS, form.n_params + 1))
        if why:
            out["skipped"][form.name] = why
            continue
        x, y = _xy(pts, form.inputs, metric)
        law = form.fitter(x, y, floor)
        boots = bootstrap(x, y, law, cells=cells_of(pts), n_boot=fit_cfg["bootstrap"], seed=fit_cfg["seed"])
        surfaces[form.name] = record(form.name, (law, boots))  # type: ignore[assignment]
    out["data_constrained"] = _data_constrained_summary(out, forms, dc_reason)
    record("L(N, D)", _fit(pts, ("N", "D"), metric, fit_cfg, floor))
    if pts:
        top_c = [p for p in pts if compute_level(p) == max(compute_level(q) for q in pts)]
        top_d = [p for p in pts if p["D"] == max(q["D"] for q in pts)]
        record("L(D) at the largest compute", _fit(top_c, ("D",), metric, fit_cfg, floor, min_points=3))
        record("L(C) at the largest data", _fit(top_d, ("C",), metric, fit_cfg, floor, min_points=3))
    chosen = check.get("chosen") if check.get("chosen") in surfaces else next(iter(surfaces), None)
    if chosen and c0:
        law, boots = surfaces[chosen]
        model = max(pts, key=lambda p: p["C"])
        k = float(np.median([p["C"] / (p["N"] * p["examples_seen"]) for p in pts]))
        s = Surface(chosen, law, boots, n0=float(model["N"]), k=k, hidden=tuple(not_identified(law, boots)))
        v = verdict(s, d0, c0, metric, fit_cfg, unit, out.get("gpus"))
        v["surface"] = {"name": chosen, "n0": s.n0, "k": s.k}  # what surface_of needs to rebuild it for plots
        verified = _verified(s, checks, pts, metric, fit_cfg)
        v["validation"] = validation(check, chosen, verified)
        v["verified"] = verified
        spf = float(np.median([p["train_seconds"] / p["C"] for p in pts]))
        if costs:
            v["price"] = price(s, d0, c0, costs, spf, metric, unit)
            for arm in ("data", "compute"):
                if v["price"]["available"] and not v.get(f"{arm}_2x", {}).get("identified", True):
                    v["price"]["sentence"] += (f" The {arm} arm is not identified by these trials: its figure is the "
                                               "law's shape, not an estimate.")
        out["verdict"] = v
        if v["decision"] != "out of range":
            out["decision_map"] = decision_map(s, c0, d0)
    else:
        why = "; ".join(f"{k}: {v}" for k, v in out["skipped"].items() if k.startswith("L(C, D)") or "constrained" in k)
        out["verdict"] = {"decision": "no fit", "sentence": "No verdict: no data-vs-compute surface could be fitted "
                          f"({why or 'no trials'}). Vary both data.size and compute (train.steps, train.flops or "
                          "model.size).", "D0": d0, "C0": c0}
    out["compute_optimal"] = compute_optimal(pts, metric, c0, fit_cfg, floor) if c0 else {"available": False,
                                                                                          "reason": "no trials"}
    return out


def group_axes_of(axes: dict[str, list[Any]] | None) -> tuple[str, ...]:
    """The study's group axes (spec.GROUP_AXES: model.family, model.arch) that take more than one value, in the
    study's axis order; with one value an axis changes nothing between trials and stays what it was before."""
    from genscale.study.spec import GROUP_AXES

    return tuple(a for a, values in (axes or {}).items() if a in GROUP_AXES and len(values) > 1)


def group_of(result: dict[str, Any], group_axes: tuple[str, ...]) -> str:
    """The group a trial belongs to: its value of the group axis ("gan"), or of each of them joined ("gan/gan-mlp")."""
    return "/".join(str(result["axes"].get(a)) for a in group_axes)


def group_summary(results: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """One group's grid trials at a glance: how many, their model sizes, the best metric and the compute that reached
    it, and what a FLOP and an image cost: median training seconds per counted FLOP, median sampling seconds and
    sampling FLOPs per image where the trials record them (a diffusion model samples in many network passes, so its
    sampling cost belongs beside its training FLOPs). None where no trial has the number."""
    grid = [r for r in results if r.get("role", "grid") == "grid"]
    scored = [r for r in grid if math.isfinite(r["metrics"].get(metric, math.nan))]
    best = min(scored, key=lambda r: r["metrics"][metric], default=None)

    def median(values: list[float]) -> float | None:
        return float(np.median(values)) if values else None

    return {"trials": len(grid), "N": [min(r["N"] for r in grid), max(r["N"] for r in grid)] if grid else None,
            "best": best["metrics"][metric] if best else None, "best_C": best["C"] if best else None,
            "best_trial": best["trial"] if best else None,
            "seconds_per_flop": median([r["train_seconds"] / r["C"] for r in grid if r.get("C")]),
            **{key: median([float(r[key]) for r in grid if r.get(key) is not None])
               for key in ("sampling_seconds_per_image", "sampling_flops_per_image")}}


def _unit_of(results: list[dict[str, Any]], default: str) -> str:
    """What D counts for these trials by their family's words, else `default`."""
    from genscale.study.report import UNKNOWN_LABELS, family_labels

    words = family_labels(results)
    return default if words == UNKNOWN_LABELS else words["D"]


def analyse_groups(results: list[dict[str, Any]], group_axes: tuple[str, ...], *, metric: str,
                   fit_cfg: dict[str, Any], operating_data_size: int, operating_flops: float | None,
                   axes: dict[str, list[Any]], floor: float = 0.0, costs: dict[str, Any] | None = None,
                   unit: str = "unique examples") -> dict[str, Any]:
    """`analyse` for each group of trials (one value of the group axes: a family, an architecture) on its own, since
    a law or a verdict that mixes two models describes neither. The group axes are neither scaling axes nor
    treatments; every other treatment is compared within each group. Without operating_flops each group's verdict
    is at its own largest compute (families differ in FLOPs per step by orders of magnitude).

    Returns {"metric", "group_axis" ("model.family"; several joined by ", "), "group_axes", "groups": {value: that
    group's analysis, shaped as `analyse` returns it}, "group_summary": {value: `group_summary`}, "verdict":
    {"decision": "per group", "sentence": "gan: ...; ddpm: ...", "decisions": {value: decision}}, "comparisons":
    {"<value>: <axis>": ...} (each group's treatment comparisons, named by group), "trials_used", "floor"}."""
    inner = {a: v for a, v in axes.items() if a not in group_axes}
    names = ["/".join(map(str, values)) for values in itertools.product(*(axes[a] for a in group_axes))]
    members = {g: [r for r in results if group_of(r, group_axes) == g] for g in names}
    groups = {g: analyse(m, metric=metric, fit_cfg=fit_cfg, operating_data_size=operating_data_size,
                         operating_flops=operating_flops, axes=inner, floor=floor, costs=costs,
                         unit=_unit_of(m, unit)) for g, m in members.items()}
    sentence = "; ".join(f"{g}: {a['verdict']['sentence'].rstrip('.')}" for g, a in groups.items()) + "."
    return {"metric": metric, "group_axis": ", ".join(group_axes), "group_axes": list(group_axes), "groups": groups,
            "group_summary": {g: group_summary(m, metric) for g, m in members.items()},
            "verdict": {"decision": "per group", "sentence": sentence,
                        "decisions": {g: a["verdict"]["decision"] for g, a in groups.items()}},
            "comparisons": {f"{g}: {axis}": c for g, a in groups.items() for axis, c in a["comparisons"].items()},
            "trials_used": sum(a["trials_used"] for a in groups.values()), "floor": floor}


def _verified(s: Surface, checks: list[dict[str, Any]], pts: list[dict[str, Any]], metric: str,
              fit_cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The verify trials (2x data, 2x compute at the operating point) against the surface's prediction intervals."""
    if not checks:
        return []
    x_fit, y_fit = _xy(pts, s.law.inputs, metric)
    x_new, y_new = _xy(checks, s.law.inputs, metric)
    pred, lo, hi = _predict_new(s.law, x_fit, y_fit, cells_of(pts), x_new, fit_cfg)
    return [{"trial": c["trial"], "measured": float(m), "predicted": float(f), "interval": [float(a), float(b)],
             "log_error": float(np.log(f) - np.log(m)), "inside": bool(a <= m <= b)}
            for c, m, f, a, b in zip(checks, y_new, pred, lo, hi, strict=True)]


def _data_constrained_summary(out: dict[str, Any], forms: list[Form], reason: str | None) -> dict[str, Any]:
    """The data-constrained surface's R* beside the published one, or why it was not fitted."""
    dc = next((f.name for f in forms if "constrained" in f.name), None)
    if dc is None:
        return {"available": False, "reason": reason}
    if dc not in out["laws"]:
        return {"available": False, "reason": out["skipped"].get(dc, "not fitted")}
    law = out["laws"][dc]
    r_star = law["params"]["R*"]
    return {"available": True, "law_name": dc, "r_star": r_star,
            "r_star_interval": (law.get("intervals") or {}).get("R*"),
            "r_star_identified": "R*" not in law["not_identified"], "r_star_published": R_STAR_DEFAULT}


def compute_level(p: dict[str, Any]) -> tuple:
    """Trials on one compute level share steps and model size (they differ in data only)."""
    return (p["steps"], p["N"])


def at_metric(result: dict[str, Any], which: str) -> dict[str, Any]:
    """A trial result whose "metrics" are those of its best checkpoint (which = "best", when it has one) or of its
    last step; the last step's stay under "final_metrics"."""
    best = result.get("best")
    chosen = best["metrics"] if which == "best" and best else result["metrics"]
    return {**result, "metrics": chosen, "final_metrics": result["metrics"],
            "metric_from": f"best checkpoint (step {best['step']})" if which == "best" and best else "final step"}


def _summary_metrics(analysis: dict[str, Any], done: int, failed: int) -> dict[str, Any]:
    """The numbers a study logs to its tracking run (a grouped verdict has no single 2x change: None)."""
    return {"trials_done": done, "trials_failed": failed,
            "data_2x_change": analysis["verdict"].get("data_2x", {}).get("change"),
            "compute_2x_change": analysis["verdict"].get("compute_2x", {}).get("change")}


def analyse_study(study_dir: Path) -> dict[str, Any]:
    """Analyse a study folder's results and write analysis.json, report.html and report.md."""
    from genscale.study.execute import load_results, read_plan
    from genscale.study.report import write_report

    study_dir = Path(study_dir)
    plan = read_plan(study_dir)
    done, failed = load_results(study_dir, plan)
    s = plan["study"]
    done = [at_metric(r, s.get("metric_at", "final")) for r in done]
    floor_path = study_dir / "floor.json"
    floor = read_json(floor_path, "metric floor") if floor_path.exists() else {"value": 0.0, "how": "not measured"}
    from genscale.study.report import family_labels

    unit = family_labels(done)["D"]
    probe_path = study_dir / "gpu_probe.json"
    probe = read_json(probe_path, "GPU probe") if probe_path.exists() else None
    analysis = analyse(done, metric=s["metric"], fit_cfg=s["fit"], operating_data_size=plan["operating_data_size"],
                       operating_flops=s["operating_point"]["flops"], axes=s["axes"], floor=float(floor["value"]),
                       costs=s.get("costs"), unit=unit, gpu_probe=probe)
    group_axes = group_axes_of(s["axes"])
    axes_of = {t["id"]: t["axes"] for t in plan["trials"]}  # a failed trial's axes are in the plan only

    def in_group(trial_id: str, g: str) -> bool:
        return group_of({"axes": axes_of.get(trial_id, {})}, group_axes) == g

    parts = [(analysis, done, failed, plan["trials"])]  # each group's own trials, failures and numbers too
    parts += [(a, [r for r in done if in_group(r["trial"], g)], [f for f in failed if in_group(f["trial"], g)],
               [t for t in plan["trials"] if in_group(t["id"], g)]) for g, a in analysis.get("groups", {}).items()]
    for a, done_here, failed_here, planned in parts:
        a["floor_how"] = floor["how"]
        a["metric_at"] = s.get("metric_at", "final")
        a["failed"] = failed_here
        a["trials_total"] = len(planned)
        a["summary_metrics"] = _summary_metrics(a, len(done_here), len(failed_here))
    atomic_write_bytes(study_dir / "analysis.json", json.dumps(analysis, indent=1, default=str).encode())
    write_report(study_dir, plan, done, analysis)
    return analysis
