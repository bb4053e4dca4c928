"""From trial results to fitted laws and a verdict: does 2x data or 2x compute buy more at the operating point?

Laws fitted (lower-is-better metric L; D unique examples, C counted training FLOPs, N parameters of G + D,
S examples processed = steps x batch x discriminator steps):
  L(C, D) = E + A/C^alpha + B/D^beta   the data-vs-compute surface of the verdict (when both vary)
  L(N, D) = E + A/N^alpha + B/D^beta   Hoffmann et al. 2022 (when model size varies)
  L(D), L(C)                           one-axis laws, at the largest compute / the largest data of the grid
  L(D')                                Muennighoff et al. 2023 effective data, when examples repeat (epochs > 1)
  L(N, S) with C = k N S               the compute-optimal split of a budget between model size and data
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from genscale.paths import atomic_write_bytes
from genscale.study.fit import (
    PowerLaw,
    bootstrap,
    effective_data,
    fit_data_constrained,
    fit_power_law,
    interval,
)

MIN_POINTS = 4  # fewer trials than this cannot pin a law with an irreducible term


def _law_dict(law: PowerLaw, boots: list[PowerLaw] | None, level: float) -> dict[str, Any]:
    out: dict[str, Any] = {"axes": list(law.axes), "params": law.params(), "r2_log": law.r2_log,
                           "rmse_log": law.rmse_log, "observed_range": law.observed_range}
    if boots:
        out["intervals"] = {k: interval(np.array([b.params()[k] for b in boots]), level) for k in law.params()}
    return out


def _fit(points: list[dict[str, Any]], axes: tuple[str, ...], metric: str, fit_cfg: dict[str, Any],
         min_points: int = MIN_POINTS) -> tuple[PowerLaw, list[PowerLaw]] | str:
    """Fit L over `axes` (keys of the trial results) with bootstrap; a reason string when it cannot."""
    if len(points) < min_points:
        return f"{len(points)} trials; needs at least {min_points}"
    x = np.array([[p[a] for a in axes] for p in points], dtype=float)
    y = np.array([p["metrics"][metric] for p in points], dtype=float)
    for i, a in enumerate(axes):
        if len(np.unique(x[:, i])) < 2:
            return f"{a} takes one value"
    if (y <= 0).any() or not np.isfinite(y).all():
        return f"{metric} is not positive and finite in every trial"
    law = fit_power_law(x, y, axes)
    return law, bootstrap(x, y, axes, law, n_boot=fit_cfg["bootstrap"], seed=fit_cfg["seed"])


def _within(value: float, lo: float, hi: float, factor: float) -> bool:
    return lo / factor <= value <= hi * factor


def _change(law: PowerLaw, boots: list[PowerLaw], base: list[float], moved: list[float], level: float
            ) -> dict[str, Any]:
    """Predicted metric change from `base` to `moved` (points in the law's axis order), with its interval."""
    def delta(m: PowerLaw) -> float:
        return float(m.predict(np.array([moved]))[0] - m.predict(np.array([base]))[0])

    values = np.array([delta(b) for b in boots])
    lo, hi = interval(values, level)
    return {"change": delta(law), "interval": [lo, hi], "at": float(law.predict(np.array([base]))[0])}


def _fmt(x: float) -> str:
    x = x + 0.0  # no "-0"
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2g}"


def verdict(law: PowerLaw, boots: list[PowerLaw], d0: float, c0: float, metric: str, fit_cfg: dict[str, Any]
            ) -> dict[str, Any]:
    """Predicted change of the metric from 2x unique data and from 2x compute at (D0, C0), and which wins."""
    level, factor = fit_cfg["level"], fit_cfg["max_extrapolation"]
    (c_lo, c_hi), (d_lo, d_hi) = law.observed_range["C"], law.observed_range["D"]
    problems = []
    if not (_within(d0, d_lo, d_hi, factor) and _within(2 * d0, d_lo, d_hi, factor)):
        problems.append(f"D0 = {d0:.0f} (and 2x) lies more than {factor:g}x outside the observed D "
                        f"[{d_lo:.0f}, {d_hi:.0f}]")
    if not (_within(c0, c_lo, c_hi, factor) and _within(2 * c0, c_lo, c_hi, factor)):
        problems.append(f"C0 = {c0:.3g} (and 2x) lies more than {factor:g}x outside the observed C "
                        f"[{c_lo:.3g}, {c_hi:.3g}]")
    if problems:
        return {"decision": "out of range", "sentence": "No verdict: " + "; ".join(problems) +
                ". Add trials nearer the operating point or set operating_point in the study.", "D0": d0, "C0": c0}
    data = _change(law, boots, [c0, d0], [c0, 2 * d0], level)
    compute = _change(law, boots, [c0, d0], [2 * c0, d0], level)
    (dl, dh), (cl, ch) = data["interval"], compute["interval"]
    if dh < cl:
        decision = "data"
    elif ch < dl:
        decision = "compute"
    else:
        decision = "inconclusive"

    def phrase(ch: dict[str, Any]) -> str:
        word = "lower" if ch["change"] <= 0 else "raise"
        lo, hi = sorted(-v if word == "lower" else v for v in ch["interval"])
        return f"{word} {metric} by {_fmt(abs(ch['change']))} [{_fmt(lo)}, {_fmt(hi)}]"

    pct = int(round(level * 100))
    sentence = (f"At {d0:,.0f} unique examples and {c0:.3g} FLOPs (predicted {metric} {_fmt(data['at'])}), "
                f"doubling the data is predicted to {phrase(data)}; doubling compute to {phrase(compute)} "
                f"({pct}% bootstrap intervals). ")
    sentence += {"data": "More data buys more quality here.",
                 "compute": "More compute buys more quality here.",
                 "inconclusive": "Inconclusive: the intervals overlap."}[decision]
    return {"decision": decision, "sentence": sentence, "D0": d0, "C0": c0, "data_2x": data,
            "compute_2x": compute,
            "gpus_2x": {**compute, "efficiency": 1.0,
                        "note": "2x GPUs at equal wall time = 2x compute at the measured data-parallel efficiency; "
                                "no train.gpus trials were run, so ideal efficiency (1.0) is assumed: an upper "
                                "bound on what 2x GPUs buy"}}


def compute_optimal(points: list[dict[str, Any]], metric: str, c0: float, fit_cfg: dict[str, Any]
                    ) -> dict[str, Any]:
    """Hoffmann et al. 2022 eq. 4: N_opt(C) = G (C/k)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta)),
    with L(N, S) fitted over model size N and examples processed S, and C = k N S measured (k = median C/(N S))."""
    fitted = _fit(points, ("N", "examples_seen"), metric, fit_cfg)
    if isinstance(fitted, str):
        return {"available": False, "reason": f"L(N, S) not fitted: {fitted}"}
    law, boots = fitted
    k = float(np.median([p["C"] / (p["N"] * p["examples_seen"]) for p in points]))

    def n_opt(m: PowerLaw) -> float:
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
            operating_flops: float | None, axes: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """Every law the trials support, the verdict at the operating point, and the compute-optimal split.

    With treatment axes (e.g. data.clean), the laws are fitted to the trials at each treatment's first value
    (a law mixes no treatments) and the treatments are compared value against value."""
    from genscale.study.spec import SCALING_AXES

    level = fit_cfg["level"]
    treatments = {a: [str(v) for v in vals] for a, vals in (axes or {}).items() if a not in SCALING_AXES}
    comparisons = compare_treatments(results, axes or {}, metric) if treatments else {}
    pts = [r for r in results if metric in r["metrics"]
           and all(str(r["axes"].get(a)) == vals[0] for a, vals in treatments.items())]
    out: dict[str, Any] = {"metric": metric, "trials_used": len(pts), "laws": {}, "skipped": {},
                           "comparisons": comparisons,
                           "laws_fitted_at": {a: vals[0] for a, vals in treatments.items()}}
    c0 = operating_flops or (max(p["C"] for p in pts) if pts else None)
    d0 = float(operating_data_size)

    def record(name: str, fitted: tuple[PowerLaw, list[PowerLaw]] | str) -> tuple[PowerLaw, list] | None:
        if isinstance(fitted, str):
            out["skipped"][name] = fitted
            return None
        out["laws"][name] = _law_dict(*fitted, level)
        return fitted

    surface = record("L(C, D)", _fit(pts, ("C", "D"), metric, fit_cfg))
    record("L(N, D)", _fit(pts, ("N", "D"), metric, fit_cfg))
    if pts:
        top_c = [p for p in pts if compute_level(p) == max(compute_level(q) for q in pts)]
        top_d = [p for p in pts if p["D"] == max(q["D"] for q in pts)]
        record("L(D) at the largest compute", _fit(top_c, ("D",), metric, fit_cfg, min_points=3))
        record("L(C) at the largest data", _fit(top_d, ("C",), metric, fit_cfg, min_points=3))
    out["data_constrained"] = _data_constrained(pts, metric, fit_cfg)
    if surface and c0:
        out["verdict"] = verdict(*surface, d0, c0, metric, fit_cfg)
    else:
        out["verdict"] = {"decision": "no fit", "sentence": "No verdict: the data-vs-compute law L(C, D) could not "
                          f"be fitted ({out['skipped'].get('L(C, D)', 'no trials')}). Vary both data.size and "
                          "compute (train.steps, train.flops or model.size).", "D0": d0, "C0": c0}
    out["compute_optimal"] = compute_optimal(pts, metric, c0, fit_cfg) if c0 else {"available": False,
                                                                                   "reason": "no trials"}
    return out


def compute_level(p: dict[str, Any]) -> tuple:
    """Trials on one compute level share steps and model size (they differ in data only)."""
    return (p["steps"], p["N"])


def _data_constrained(pts: list[dict[str, Any]], metric: str, fit_cfg: dict[str, Any]) -> dict[str, Any]:
    mode = fit_cfg["data_constrained"]
    if mode == "off":
        return {"available": False, "reason": "switched off (fit.data_constrained: off)"}
    if mode == "auto" and not any(p["epochs"] > 1 for p in pts):
        return {"available": False, "reason": "no trial repeats its data (every epochs <= 1)"}
    if len({p["N"] for p in pts}) > 1:
        return {"available": False, "reason": "the effective-data law L(D') assumes one model size"}
    if len(pts) < MIN_POINTS:
        return {"available": False, "reason": f"{len(pts)} trials; needs at least {MIN_POINTS}"}
    unique = np.array([p["D"] for p in pts], dtype=float)
    epochs = np.array([p["epochs"] for p in pts], dtype=float)
    y = np.array([p["metrics"][metric] for p in pts], dtype=float)
    law, r_star = fit_data_constrained(unique, epochs, y, r_star=fit_cfg["r_star"])
    return {"available": True, "r_star": r_star,
            "r_star_source": "given" if fit_cfg["r_star"] is not None else "fitted (log grid 0.5-200)",
            "law": _law_dict(law, None, fit_cfg["level"]),
            "effective_data": effective_data(unique, epochs, r_star).tolist()}


def analyse_study(study_dir: Path) -> dict[str, Any]:
    """Analyse a study folder's results and write analysis.json, report.html and report.md."""
    from genscale.study.execute import load_results, read_plan
    from genscale.study.report import write_report

    study_dir = Path(study_dir)
    plan = read_plan(study_dir)
    done, failed = load_results(study_dir, plan)
    s = plan["study"]
    analysis = analyse(done, metric=s["metric"], fit_cfg=s["fit"], operating_data_size=plan["operating_data_size"],
                       operating_flops=s["operating_point"]["flops"], axes=s["axes"])
    analysis["failed"] = failed
    analysis["trials_total"] = len(plan["trials"])
    analysis["summary_metrics"] = {
        "trials_done": len(done), "trials_failed": len(failed),
        "data_2x_change": analysis["verdict"].get("data_2x", {}).get("change"),
        "compute_2x_change": analysis["verdict"].get("compute_2x", {}).get("change")}
    atomic_write_bytes(study_dir / "analysis.json", json.dumps(analysis, indent=1, default=str).encode())
    write_report(study_dir, plan, done, analysis)
    return analysis
