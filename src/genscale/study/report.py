"""The study report: one self-contained HTML file (plots and sample grids inlined) and a Markdown twin.

The report opens with the verdict (with how the held-out trials were predicted and what each choice costs, when the
analysis has them), then the held-out trials, treatment comparisons, the fitted laws, plots, trials, samples and
provenance. Both files are rendered from one list of blocks, so they say the same thing.

Plots (matplotlib, Agg): the metric against D per compute level and against C per data level with the fitted
L(C, D) drawn through them (iso-compute and iso-data curves), the fitted surface with the observed trials, the
decision map (where 2x data beats 2x compute), iso-FLOP curves over model size when the compute-optimal law was
fitted, and the log residuals. Every log axis goes through `log_axis`: a few compactly labelled major ticks
("3e11", "30k"), unlabelled minor ticks, for ranges from a fraction of a decade to many decades.

A study over several families (or architectures: analysis["groups"]) opens with one verdict line per group, then
compares the groups on shared plots and a table of what each reached and what its FLOPs and images cost, then gives
each group its own section: the same blocks and plots as a one-model study, from that group's trials.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from genscale.study.analysis import Surface, column, compute_level, group_of, surface_of
from genscale.study.fit import law_from_dict

MAX_TICK_LABELS = 6  # labels per log axis; more crowd a 6-inch plot
TEXT_SAMPLE_CHARS = 300  # of each trial's samples.txt shown in the report

UNKNOWN_LABELS = {"D": "unique training examples", "N": "parameters N", "unit": "examples"}


def trial_family(result: dict[str, Any]) -> str | None:
    """The model family of a trial result (results written before it was recorded: told by their own fields)."""
    return result.get("family") or ("gpt" if "tokenizer" in result else "gan" if "params_g" in result else None)


def family_labels(done: list[dict[str, Any]]) -> dict[str, str]:
    """Axis words for D and N from the trials' families (families/<name>.py `labels`); trials of several families
    share the words of D when they count the same unit, and N is each family's own count."""
    from genscale.families import FAMILIES

    labels = [FAMILIES[f].labels for f in {trial_family(r) for r in done} if f in FAMILIES]
    if not labels:
        return UNKNOWN_LABELS
    if len(labels) == 1:
        return labels[0]
    same = {lab["unit"] for lab in labels} == {labels[0]["unit"]}
    return {"D": labels[0]["D"] if same else UNKNOWN_LABELS["D"], "N": "parameters N (each family's own count)",
            "unit": labels[0]["unit"] if same else UNKNOWN_LABELS["unit"]}


# --- log axes ----------------------------------------------------------------------------------------------------

def _shortest(x: float) -> str:
    """x with the fewest significant digits (up to 6) that still read back as x."""
    for digits in range(1, 7):
        rounded = float(f"{x:.{digits}g}")
        if abs(rounded - x) <= 1e-9 * abs(x):
            break
    return np.format_float_positional(rounded, trim="-")  # "100", not "1e+02"


def compact_number(x: float, kind: str = "value") -> str:
    """A short tick label. kind "count": 500, 16k, 1.5M, 2B; "sci": 1e11, 2.5e11; "value": 20, 2.5, else sci."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if kind == "count" and 1 <= abs(x) < 1e15:
        for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"), (1, "")):
            if abs(x) >= scale:
                return _shortest(x / scale) + suffix
    if kind == "value" and 1e-3 <= abs(x) < 1e5:
        return _shortest(x)
    exponent = math.floor(math.log10(abs(x)) + 1e-9)
    return f"{_shortest(x / 10.0**exponent)}e{exponent}"


def log_ticks(vmin: float, vmax: float, max_labels: int = MAX_TICK_LABELS) -> np.ndarray:
    """Major tick values inside [vmin, vmax] for a log axis: the densest of 1-2-5, 1-3 and every n-th decade that
    has at most `max_labels` ticks; below about half a decade, where those give fewer than 3, the most evenly spaced
    round numbers that fit instead."""
    lo, hi = sorted((float(vmin), float(vmax)))
    if hi <= 0 or not math.isfinite(hi):
        return np.array([])
    lo = lo if lo > 0 else hi / 10
    e_lo, e_hi = math.floor(math.log10(lo)), math.ceil(math.log10(hi))

    def inside(ticks: list[float] | np.ndarray) -> np.ndarray:
        t = np.asarray(ticks, dtype=float)
        return t[(t >= lo * (1 - 1e-9)) & (t <= hi * (1 + 1e-9))]

    decades = range(e_lo, e_hi + 1)
    candidates = [inside([s * 10.0**e for e in decades for s in subs]) for subs in ((1, 2, 5), (1, 3))]
    for stride in range(1, e_hi - e_lo + 2):
        candidates += [inside([10.0**e for e in decades if e % stride == offset]) for offset in range(stride)]
    best = max((c for c in candidates if len(c) <= max_labels), key=len, default=np.array([]))
    if len(best) < 3:
        for nbins in range(3, max_labels + 1):
            even = inside(MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi))
            if len(best) < len(even) <= max_labels:
                best = even
    return best


class _CompactLogLocator(LogLocator):
    """`log_ticks` as a matplotlib locator, so the ticks follow the view limits (LogLocator's limit handling)."""

    def __init__(self, max_labels: int) -> None:
        super().__init__()
        self.max_labels = max_labels

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        return log_ticks(vmin, vmax, self.max_labels)


def log_axis(ax, which: str, *, kind: str = "value", label: str | None = None,
             max_labels: int = MAX_TICK_LABELS) -> None:
    """Make ax's x or y axis logarithmic with at most `max_labels` compact major labels (see `compact_number` for
    `kind`) and unlabelled minor ticks: matplotlib's default labels minor ticks on axes spanning less than a decade,
    and they overlap ("2×10¹³×10⁴...")."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_locator(_CompactLogLocator(max_labels))
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: compact_number(x, kind)))
    axis.set_minor_formatter(NullFormatter())
    if label is not None:
        axis.set_label_text(label)


# --- plots -------------------------------------------------------------------------------------------------------

def _surface(analysis: dict[str, Any]) -> Surface | None:
    """The verdict's fitted surface (L(C, D) or the data-constrained one), or None when the analysis has none."""
    return surface_of(analysis)


def _plots(done: list[dict[str, Any]], analysis: dict[str, Any], folder: Path) -> list[tuple[str, Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = analysis["metric"]
    words = family_labels(done)
    folder.mkdir(parents=True, exist_ok=True)
    pts = [p for p in done if metric in p["metrics"]]
    if not pts:
        return []
    y = np.array([p["metrics"][metric] for p in pts])
    law = _surface(analysis)
    surface = analysis["laws"][law.name] if law is not None else {}
    made: list[tuple[str, Path]] = []

    def save(fig, name: str, title: str) -> None:
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append((title, path))

    for x_key, group_key, x_label, x_kind, group_kind, name in (
            ("D", "C", f"{words['D']} D", "count", "sci", "metric_vs_data"),
            ("C", "D", "training FLOPs C", "sci", "count", "metric_vs_compute")):
        fig, ax = plt.subplots(figsize=(6, 4))
        level_of = (lambda p: p["D"]) if group_key == "D" else compute_level
        levels = sorted({level_of(p) for p in pts})
        cmap = plt.get_cmap("viridis", max(len(levels), 2))
        for i, level in enumerate(levels):
            group = [p for p in pts if level_of(p) == level]
            group.sort(key=lambda p: p[x_key])
            xs = np.array([p[x_key] for p in group], dtype=float)
            g_value = float(np.mean([p[group_key] for p in group]))
            ax.plot(xs, [p["metrics"][metric] for p in group], "o", color=cmap(i),
                    label=f"{group_key} = {compact_number(g_value, group_kind)}")
            if law is not None:
                grid = np.geomspace(xs.min(), xs.max(), 50)
                n = float(np.mean([p["N"] for p in group]))  # a compute level is one model size
                fitted = law.predict(np.full_like(grid, g_value), grid, n=n) if x_key == "D" else \
                    law.predict(grid, np.full_like(grid, g_value))
                ax.plot(grid, fitted, "-", color=cmap(i), alpha=0.7)
        log_axis(ax, "x", kind=x_kind, label=x_label)
        log_axis(ax, "y", label=metric)
        ax.legend(fontsize=7, title=("compute" if group_key == "C" else "data"), title_fontsize=7)
        lines = f"lines: fitted {law.name}" if law is not None else "no fitted surface"
        ax.set_title(f"{metric} vs {x_key}; {lines}", fontsize=9)
        save(fig, name, f"{metric} against {x_label}, one colour per {'compute' if group_key == 'C' else 'data'} "
                        "level")

    c = np.array([p["C"] for p in pts], dtype=float)
    d = np.array([p["D"] for p in pts], dtype=float)
    if law is not None:
        cg, dg = np.meshgrid(np.geomspace(c.min(), c.max(), 60), np.geomspace(d.min(), d.max(), 60))
        z = law.predict(cg, dg)
        fig, ax = plt.subplots(figsize=(6, 4))
        cs = ax.contourf(cg, dg, z, levels=15, cmap="viridis_r")
        fig.colorbar(cs, label=f"fitted {metric}")
        ax.scatter(c, d, c=y, cmap="viridis_r", edgecolors="black", s=50, vmin=z.min(), vmax=z.max(),
                   clip_on=False, zorder=3)  # trials sit on the edges of the observed range
        log_axis(ax, "x", kind="sci", label="training FLOPs C")
        log_axis(ax, "y", kind="count", label=f"{words['D']} D")
        ax.set_title(f"fitted surface {law.name}; dots: observed trials (same colour scale)", fontsize=9)
        save(fig, "surface", "fitted surface with the observed trials")

    dm = analysis.get("decision_map")
    if dm:
        fig = _decision_map_figure(dm, c, d, words, metric)
        save(fig, "decision_map", "where 2x data beats 2x compute, from the fitted law")

    opt = analysis.get("compute_optimal", {})
    if opt.get("available"):
        nl = law_from_dict(opt["law"])
        k = opt["flops_per_param_example"]
        n = np.array([p["N"] for p in pts], dtype=float)
        fig, ax = plt.subplots(figsize=(6, 4))
        grid = np.geomspace(n.min() / 2, n.max() * 2, 60)
        budgets = sorted({p["C"] for p in pts})
        for budget in budgets[::max(1, len(budgets) // 5)]:
            ax.plot(grid, nl.predict(np.column_stack([grid, budget / (k * grid)])),
                    label=f"C = {compact_number(budget, 'sci')}")
        log_axis(ax, "x", kind="count", label=words["N"])
        ax.set_ylabel(f"fitted {metric}")
        ax.legend(fontsize=7)
        ax.set_title(f"iso-FLOP curves of L(N, S), S = C / (k N) {words['unit']} processed", fontsize=9)
        save(fig, "iso_flop", "iso-FLOP curves over model size")

    if law is not None:
        resid = np.log(y) - np.log(law.law.predict(np.array([[column(p, k) for k in law.law.inputs] for p in pts])))
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.axhline(0, color="grey", lw=1)
        ax.plot(range(len(resid)), resid, "o")
        ax.set_xticks(range(len(resid)), [p["trial"].split("-")[0] for p in pts], rotation=90, fontsize=6)
        ax.set_ylabel("log observed - log fitted")
        ax.set_title(f"residuals of {law.name} (rmse {_fmt_value(surface.get('rmse_log'), '.3f')} in log units)",
                     fontsize=9)
        save(fig, "residuals", "log residuals of the fitted surface per trial")

    scaling = (analysis.get("gpus") or {}).get("trials") or []
    if scaling:
        fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
        configs: dict[str, list[dict[str, Any]]] = {}
        for row in scaling:
            configs.setdefault(row["config"], []).append(row)
        for name, rows in configs.items():
            rows = sorted(rows, key=lambda r: r["world_size"])
            sizes = [r["world_size"] for r in rows]
            left.plot(sizes, [r["examples_per_second"] for r in rows], "o-", label=name[:24])
            if all(r["efficiency"] is not None for r in rows):
                right.plot(sizes, [r["efficiency"] for r in rows], "o-")
        right.axhline(1, color="grey", lw=1, ls="--")
        left.set_xlabel("data-parallel processes (train.gpus)")
        right.set_xlabel("data-parallel processes (train.gpus)")
        left.set_ylabel(f"{words['unit']} per second")
        right.set_ylabel("scaling efficiency vs 1 process")
        left.legend(fontsize=6)
        save(fig, "gpu_scaling", "measured throughput and scaling efficiency against the world size")
    return made


DATA_WINS, COMPUTE_WINS = "#2166ac", "#b2182b"  # the two ends of RdBu_r


def _decision_map_figure(dm: dict[str, Any], c: np.ndarray, d: np.ndarray, words: dict[str, str], metric: str):
    """gain_data - gain_compute over the (C, D) grid (both changes of a lower-is-better metric, so < 0: 2x data
    lowers it more), blue where data wins, red where compute wins, the break-even line, trials and (C0, D0)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cg, dg = np.asarray(dm["C"], dtype=float), np.asarray(dm["D"], dtype=float)
    diff = np.asarray(dm["gain_data"], dtype=float) - np.asarray(dm["gain_compute"], dtype=float)  # (len D, len C)
    spread = float(np.nanmax(np.abs(diff))) or 1.0
    # each side saturates on its own, so a narrow win still shows its colour
    norm = TwoSlopeNorm(0.0, vmin=min(float(np.nanmin(diff)), -1e-3 * spread),
                        vmax=max(float(np.nanmax(diff)), 1e-3 * spread))
    fig, ax = plt.subplots(figsize=(6.5, 5))
    mesh = ax.pcolormesh(cg, dg, diff, cmap="RdBu_r", norm=norm, shading="gouraud")
    fig.colorbar(mesh).set_label(f"{metric} change: 2x data − 2x compute", fontsize=8)
    handles = [Patch(color=DATA_WINS, label="2x data beats 2x compute"),
               Patch(color=COMPUTE_WINS, label="2x compute beats 2x data")]
    if np.nanmin(diff) < 0 < np.nanmax(diff):
        ax.contour(cg, dg, diff, levels=[0.0], colors="black", linewidths=1.5)
        handles.append(Line2D([], [], color="black", lw=1.5, label="break-even"))
    ax.scatter(c, d, s=22, facecolor="white", edgecolor="black", zorder=3, clip_on=False)
    handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="white", markeredgecolor="black",
                          label="observed trials"))
    ax.plot([dm["C0"]], [dm["D0"]], marker="*", ms=16, color="gold", markeredgecolor="black", ls="", zorder=4,
            clip_on=False)
    handles.append(Line2D([], [], ls="", marker="*", ms=12, color="gold", markeredgecolor="black",
                          label="operating point (C0, D0)"))
    log_axis(ax, "x", kind="sci", label="training FLOPs C")
    log_axis(ax, "y", kind="count", label=f"{words['D']} D")
    # below the plot: inside it would hide the operating point, which often sits on an edge of the grid
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    ax.set_title("Where 2x data beats 2x compute (this model, this data)", fontsize=10)
    return fig


GROUP_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # one per group, beside its colour (tab10)


def _fitted_trials(rows: list[dict[str, Any]], analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """A group's grid trials its laws were fitted to: with the metric, at each treatment's first value."""
    at = analysis.get("laws_fitted_at", {})
    return [r for r in rows if r.get("role", "grid") == "grid" and analysis["metric"] in r["metrics"]
            and all(str(r["axes"].get(a)) == v for a, v in at.items())]


def _group_plots(members: dict[str, list[dict[str, Any]]], analysis: dict[str, Any], folder: Path
                 ) -> list[tuple[str, Path]]:
    """Every group's trials on one figure, against C and against D: one colour and marker per group, its series at
    its largest data size (against C) or largest compute level (against D) joined, and its fitted surface along that
    series, dashed, where it has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, word = analysis["metric"], _group_word(analysis)
    words = family_labels([r for rows in members.values() for r in rows])
    folder.mkdir(parents=True, exist_ok=True)
    colours = plt.get_cmap("tab10")
    made: list[tuple[str, Path]] = []
    for x_key, x_label, x_kind, name, along in (
            ("C", "training FLOPs C", "sci", "groups_metric_vs_compute", "largest data size"),
            ("D", f"{words['D']} D", "count", "groups_metric_vs_data", "largest compute")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (g, rows) in enumerate(members.items()):
            group = analysis["groups"][g]
            pts = _fitted_trials(rows, group)
            if not pts:
                continue
            if x_key == "C":
                d_top = max(p["D"] for p in pts)
                series = [p for p in pts if p["D"] == d_top]
                held = f"D = {compact_number(d_top, 'count')}"
            else:
                top = max(compute_level(p) for p in pts)
                series = [p for p in pts if compute_level(p) == top]
                c_top = float(np.mean([p["C"] for p in series]))  # a compute level is one model at one step count
                held = f"C = {compact_number(float(f'{c_top:.2g}'), 'sci')}"  # a legend, not a table
            series.sort(key=lambda p: p[x_key])
            style = {"color": colours(i % 10), "marker": GROUP_MARKERS[i % len(GROUP_MARKERS)]}
            ax.plot([p[x_key] for p in pts], [p["metrics"][metric] for p in pts], ls="", alpha=0.3, ms=4, **style)
            ax.plot([p[x_key] for p in series], [p["metrics"][metric] for p in series], ls="-", label=f"{g} ({held})",
                    **style)
            law = _surface(group)
            if law is not None:
                xs = np.array([p[x_key] for p in series], dtype=float)
                grid = np.geomspace(xs.min(), xs.max(), 50)
                fitted = law.predict(grid, np.full_like(grid, d_top)) if x_key == "C" else \
                    law.predict(np.full_like(grid, c_top), grid, n=float(np.mean([p["N"] for p in series])))
                ax.plot(grid, fitted, "--", color=style["color"], alpha=0.8)
        log_axis(ax, "x", kind=x_kind, label=x_label)
        log_axis(ax, "y", label=metric)
        ax.legend(fontsize=7, title=word, title_fontsize=7)
        ax.set_title(f"{metric} vs {x_key}; joined: each {word}'s trials at its {along}; dashed: its fitted law",
                     fontsize=8)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append((f"{metric} against {x_label}, one colour and marker per {word} (faint: its other trials)",
                     path))
    return made


# --- text --------------------------------------------------------------------------------------------------------

def _fmt_value(x: float | None, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _trial_rows(done: list[dict[str, Any]], failed: list[dict[str, Any]], metric: str, words: dict[str, str]
                ) -> tuple[list[str], list[list[str]]]:
    head = ["trial", "axes", f"D ({words['unit']})", "N (parameters)", "C (FLOPs)", "epochs", "train s", "device",
            metric, "status"]
    rows = [[r["trial"], " ".join(f"{k}={v}" for k, v in r["axes"].items()), f"{r['D']}", f"{r['N']}",
             f"{r['C']:.3g}", f"{r['epochs']:.2f}", f"{r['train_seconds']:.0f}", r["device"],
             f"{r['metrics'].get(metric, float('nan')):.4g}", "done"] for r in done]
    rows += [[f["trial"], "", "", "", "", "", "", "", "", "failed: " + f["error"].splitlines()[0][:200]]
             for f in failed]
    return head, rows


def _param_text(name: str, value: float | None, ci: dict[str, Any], not_identified: set[str]) -> str:
    """"alpha[C] = 0.31 [0.2, 0.4]"; "<name> not identified" when the fit says so; a null interval likewise."""
    if name in not_identified or value is None:
        return f"{name} not identified"
    text = f"{name} = {value:.4g}"
    if name in ci:
        bounds = ci[name]
        text += (" [not identified]" if bounds is None or any(b is None for b in bounds)
                 else f" [{bounds[0]:.3g}, {bounds[1]:.3g}]")
    return text


def _law_lines(analysis: dict[str, Any], words: dict[str, str]) -> list[str]:
    lines = []
    fitted_at = ", ".join(f"{a}={v}" for a, v in analysis.get("laws_fitted_at", {}).items())
    if fitted_at:
        lines.append(f"Laws are fitted to the trials at {fitted_at} (a law mixes no treatments)")
    for name, law in analysis.get("laws", {}).items():
        ci = law.get("intervals") or {}
        missing = set(law.get("not_identified") or [])
        parts = [_param_text(k, v, ci, missing) for k, v in law["params"].items()]
        fit = (f"R² (log) {_fmt_value(law.get('r2_log'), '.3f')}, "
               f"rmse (log) {_fmt_value(law.get('rmse_log'), '.3f')}")
        lines.append(f"{name}: " + ", ".join(parts) + f"; {fit}")
    if "floor" in analysis:
        lines.append(f"Irreducible terms E are bounded below by the metric's floor {analysis['floor']:.4g} "
                     f"({analysis.get('floor_how', 'given')})")
    for name, why in analysis.get("skipped", {}).items():
        lines.append(f"{name}: not fitted ({why})")
    dc = analysis.get("data_constrained", {})
    if dc.get("available") and "law_name" in dc:  # a candidate surface, printed with the laws above
        ci = dc.get("r_star_interval")
        r_star = (f"R* = {dc['r_star']:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci and None not in ci else "")
                  if dc.get("r_star_identified", True) else "R* not identified")
        lines.append(f"{dc['law_name']} (Muennighoff et al. 2023): {r_star}; published R_D* "
                     f"{_fmt_value(dc.get('r_star_published'), '.3g')}")
    elif dc:
        lines.append(f"data-constrained surface: not fitted ({dc.get('reason')})")
    opt = analysis.get("compute_optimal", {})
    if opt.get("available"):
        lo, hi = opt["N_opt_interval"]
        k = opt["flops_per_param_example"]
        unit = words["unit"]
        lines.append(f"Compute-optimal split at C0 = {opt['C0']:.3g}: N_opt = {opt['N_opt']:.3g} [{lo:.3g}, "
                     f"{hi:.3g}] parameters, S_opt = {_fmt_value(opt['S_opt'], '.3g')} {unit} processed "
                     f"(k = {k:.3g} FLOPs per parameter per {unit.rstrip('s')})")
    elif opt:
        lines.append(f"Compute-optimal split: not estimated ({opt['reason']})")
    return lines


def _comparison_tables(analysis: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(title, header, rows, summary lines) per treatment axis."""
    metric = analysis["metric"]
    tables = []
    for axis, c in analysis.get("comparisons", {}).items():
        head = ["other axes"] + [f"{axis}={v}" for v in c["values"]]
        rows = [[others] + [_fmt_value(row.get(v)) for v in c["values"]] for others, row in c["rows"].items()]
        lines = [f"{axis}={v} vs {c['baseline']}: mean change of {metric} {ch['mean_change']:+.4g} over "
                 f"{ch['pairs']} paired trials" if ch["mean_change"] is not None else
                 f"{axis}={v} vs {c['baseline']}: no paired trials" for v, ch in c["vs_baseline"].items()]
        tables.append((f"{metric} by {axis}", head, rows, lines))
    return tables


def _holdout_table(trials: list[dict[str, Any]], level: float) -> tuple[list[str], list[list[str]]]:
    head = ["trial", "measured", "predicted", f"{round(level * 100)}% interval", "log error", "inside"]
    rows = []
    for t in trials:
        lo, hi = (t.get("interval") or [None, None])
        interval = "not identified" if lo is None or hi is None else f"[{lo:.4g}, {hi:.4g}]"
        inside = {True: "yes", False: "no"}.get(t.get("inside"), "-")
        rows.append([str(t["trial"]), _fmt_value(t.get("measured")), _fmt_value(t.get("predicted")), interval,
                     _fmt_value(t.get("log_error"), "+.3f"), inside])
    return head, rows


def _group_word(analysis: dict[str, Any]) -> str:
    """What a group is called: "family" for model.family, "arch" for model.arch."""
    return "/".join(a.split(".")[-1] for a in analysis["group_axes"])


def _group_table(analysis: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per group: trials, model sizes, the best metric and the compute that reached it, and the measured costs."""
    head = [_group_word(analysis), "trials", "N (parameters)", f"best {analysis['metric']}", "C at best (FLOPs)",
            "train seconds per FLOP", "sampling seconds per image", "sampling FLOPs per image"]
    rows = []
    for g, c in analysis["group_summary"].items():
        sizes = "-" if c["N"] is None else "–".join(dict.fromkeys(compact_number(n, "count") for n in c["N"]))
        rows.append([g, str(c["trials"]), sizes, _fmt_value(c["best"]), _fmt_value(c["best_C"], ".3g"),
                     _fmt_value(c["seconds_per_flop"], ".3g"), _fmt_value(c["sampling_seconds_per_image"], ".3g"),
                     _fmt_value(c["sampling_flops_per_image"], ".3g")])
    return head, rows


def _text_sample(path: Path) -> str:
    text = path.read_text(errors="replace")
    return text[:TEXT_SAMPLE_CHARS].rstrip() + (" …" if len(text) > TEXT_SAMPLE_CHARS else "")


def _sentence(text: str) -> str:
    return text if text.rstrip().endswith((".", "!", "?")) else text + "."


# --- one list of blocks, two renderings --------------------------------------------------------------------------
# ("h1" | "h2" | "h3" | "h4" | "p" | "verdict", text), ("table", head, rows), ("list", lines),
# ("figures", [(caption, path)], width or None), ("pre", text, language)

def _verdict_blocks(plan: dict[str, Any], analysis: dict[str, Any], *, gpus: bool = True) -> list[tuple]:
    """The verdict with its validation, price, the 2x-GPUs note (gpus) and the held-out trials."""
    v = analysis["verdict"]
    out: list[tuple] = [("h2", "Verdict"), ("verdict", v["sentence"])]
    for key in ("validation", "price"):
        if (v.get(key) or {}).get("sentence"):
            out.append(("p", v[key]["sentence"]))
    if gpus and (v.get("gpus_2x") or {}).get("note"):
        out.append(("p", _gpus_sentence(v)))
    holdout = analysis.get("holdout") or {}
    if holdout.get("trials"):
        level = holdout.get("level", plan.get("study", {}).get("fit", {}).get("level", 0.9))
        # the verify runs (2x data, 2x compute at the operating point) are trials the fit did not see, too
        verified = [{**t, "trial": f"{t['trial']} (verify run)"} for t in v.get("verified") or []]
        out += [("h3", "Held-out trials"), ("table", *_holdout_table(holdout["trials"] + verified, level))]
        if holdout.get("sentence"):
            out.append(("p", holdout["sentence"]))
    return out


def _gpus_sentence(v: dict[str, Any]) -> str:
    return _sentence(f"2× GPUs at equal wall time: {v['gpus_2x']['note']}")


def _body_blocks(study_dir: Path, done: list[dict[str, Any]], analysis: dict[str, Any],
                 plots: list[tuple[str, Path]]) -> list[tuple]:
    """Treatment comparisons, fits, plots, trials and samples of these trials."""
    metric = analysis["metric"]
    words = family_labels(done)
    out: list[tuple] = []
    for title, head, rows, lines in _comparison_tables(analysis):
        out += [("h2", title), ("table", head, rows), ("list", lines)]
    scaling = analysis.get("gpus")
    if scaling and scaling["trials"]:
        out += [("h2", "Data-parallel scaling (train.gpus)"),
                ("table", ["trial", "processes", f"{words['unit']}/s", "s/step", "efficiency vs 1", "MFU"],
                 [[r["trial"], str(r["world_size"]), _fmt_value(r["examples_per_second"], ".4g"),
                   _fmt_value(r["step_seconds"], ".3g"), _fmt_value(r["efficiency"], ".2f"),
                   _fmt_value(r["mfu"], ".3g")] for r in scaling["trials"]]),
                ("list", ["Throughput is each trial's own training time (evaluation excluded); trials that ran at "
                          "the same time on one machine share its cores and memory bandwidth, so run the axis with "
                          "`--workers 1` for clean numbers."])]
    out += [("h2", "Fits"), ("list", _law_lines(analysis, words)), ("h2", "Plots")]
    out += [("figures", [plot], None) for plot in plots]
    out += [("h2", "Trials"), ("table", *_trial_rows(done, analysis.get("failed", []), metric, words))]

    grids = [(r["trial"], study_dir / "trials" / r["trial"] / "samples.png") for r in done]
    grids = [(trial, path) for trial, path in grids if path.exists()]
    if grids:
        out += [("h2", "Samples"), ("figures", grids, 160)]
    texts = [(r, study_dir / "trials" / r["trial"] / "samples.txt") for r in done]
    texts = [(r, path) for r, path in texts if path.exists()]
    if texts:
        out.append(("h2", "Text samples"))
        for r, path in texts:
            out += [("h3", f"{r['trial']} ({metric} = {_fmt_value(r['metrics'].get(metric))})"),
                    ("pre", _text_sample(path), "text")]
    return out


def _provenance_blocks(study_dir: Path, plan: dict[str, Any], done: list[dict[str, Any]], analysis: dict[str, Any]
                       ) -> list[tuple]:
    words = family_labels(done)
    extractor = done[0]["extractor"] if done else "-"
    provenance = [f"dataset: {plan['dataset']} version {plan['dataset_version']} "
                  f"({plan['full_data_size']} training {words['unit']})", f"feature extractor: {extractor}",
                  f"trials: {len(done)} done, {len(analysis.get('failed', []))} failed of "
                  f"{analysis.get('trials_total', len(plan['trials']))}",
                  f"metric: {analysis['metric']} at each trial's " + (
                      "best checkpoint of its eval.every curve (scored with the final evaluation's budget; the last "
                      "step when a trial has no curve)" if analysis.get("metric_at") == "best" else "last step")]
    return [("h2", "Provenance"), ("list", provenance),
            ("h3", "Study file"), ("pre", (study_dir / "study.yaml").read_text().rstrip(), "yaml"),
            ("h3", "Resolved run config of the first trial"),
            ("pre", json.dumps(plan["trials"][0]["config"], indent=1), "json")]


def _blocks(study_dir: Path, plan: dict[str, Any], done: list[dict[str, Any]], analysis: dict[str, Any],
            plots: list[tuple[str, Path]]) -> list[tuple]:
    return ([("h1", f"Study {plan['name']}"), *_verdict_blocks(plan, analysis),
             *_body_blocks(study_dir, done, analysis, plots), *_provenance_blocks(study_dir, plan, done, analysis)])


def _demoted(blocks: list[tuple]) -> list[tuple]:
    """Headings one level down: a group's blocks under that group's heading."""
    return [(f"h{int(b[0][1]) + 1}", *b[1:]) if b[0] in ("h2", "h3") else b for b in blocks]


def _group_blocks(study_dir: Path, plan: dict[str, Any], done: list[dict[str, Any]], analysis: dict[str, Any]
                  ) -> list[tuple]:
    """A study over several groups (families, architectures): one verdict line per group, the groups compared
    (plots and a table), then each group's own blocks and plots (report_files/<group>/) under its heading."""
    axis, groups = analysis["group_axis"], analysis["groups"]
    members = {g: [r for r in done if group_of(r, tuple(analysis["group_axes"])) == g] for g in groups}
    folder = study_dir / "report_files"
    out: list[tuple] = [("h1", f"Study {plan['name']}"), ("h2", "Verdict")]
    out += [("verdict", f"{g}: {a['verdict']['sentence']}") for g, a in groups.items()]
    note = next((a["verdict"] for a in groups.values() if (a["verdict"].get("gpus_2x") or {}).get("note")), None)
    if note:
        out.append(("p", _gpus_sentence(note)))
    out += [("h2", "Families compared" if axis == "model.family" else f"{axis} compared")]
    out += [("figures", [plot], None) for plot in _group_plots(members, analysis, folder)]
    out += [("table", *_group_table(analysis)),
            ("p", f"Each {_group_word(analysis)} has its own laws and verdict, fitted to its trials alone. Seconds per "
                  "FLOP: median training seconds per counted training FLOP on the trials' devices; sampling: median "
                  "seconds and FLOPs to generate one image (a diffusion model runs its network once per sampling "
                  "step), where the trials record them.")]
    for g, a in groups.items():
        plots = _plots(members[g], a, folder / re.sub(r"[^A-Za-z0-9.+-]", "_", g))
        out += [("h2", f"{axis}={g}"),
                *_demoted(_verdict_blocks(plan, a, gpus=False) + _body_blocks(study_dir, members[g], a, plots))]
    return out + _provenance_blocks(study_dir, plan, done, analysis)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(blocks: list[tuple], study_dir: Path) -> str:
    md: list[str] = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3", "h4"):
            md += ["#" * int(kind[1]) + " " + rest[0], ""]
        elif kind in ("p", "verdict"):
            md += [rest[0], ""]
        elif kind == "table":
            head, rows = rest
            md += ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
            md += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows] + [""]
        elif kind == "list":
            md += [f"- {line}" for line in rest[0]] + [""]
        elif kind == "figures":
            figures, width = rest
            if width is None:  # plots: one image per line
                md += [f"![{caption}]({path.relative_to(study_dir).as_posix()})" for caption, path in figures]
            else:  # sample grids: a list of small images
                md += [f"- {caption}: ![{caption}]({path.relative_to(study_dir).as_posix()})"
                       for caption, path in figures]
            md.append("")
        elif kind == "pre":
            text, language = rest
            longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
            fence = "`" * max(3, longest + 1)  # a sample containing ``` cannot close the block
            md += [fence + language, text, fence, ""]
    return "\n".join(md)


def _img(path: Path, width: int | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    w = f' width="{width}"' if width else ""
    return f'<img src="data:image/png;base64,{data}"{w} alt="{html.escape(path.name)}">'


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
          "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
          ".verdict{font-size:1.15em;background:#f4f4f4;padding:0.8em;border-left:4px solid #356}"
          ".grids{display:flex;flex-wrap:wrap;gap:8px}.grids figure{margin:0;font-size:11px}"
          "pre{background:#f8f8f8;padding:0.5em;white-space:pre-wrap;font-size:12px}")


def _html(blocks: list[tuple], title: str) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_STYLE}</style></head><body>"]
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3", "h4"):
            parts.append(f"<{kind}>{e(rest[0])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{e(rest[0])}</p>")
        elif kind == "verdict":
            parts.append(f"<p class='verdict'>{e(rest[0])}</p>")
        elif kind == "table":
            head, rows = rest
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                         + "</table>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in rest[0]) + "</ul>")
        elif kind == "figures":
            figures, width = rest
            inner = "".join(f"<figure>{_img(path, width)}<figcaption>{e(caption)}</figcaption></figure>"
                            for caption, path in figures)
            parts.append(inner if width is None else f"<div class='grids'>{inner}</div>")
        elif kind == "pre":
            parts.append(f"<pre>{e(rest[0])}</pre>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(study_dir: Path, plan: dict[str, Any], done: list[dict[str, Any]], analysis: dict[str, Any]) -> Path:
    """Write report.html (self-contained) and report.md (+ report_files/) into the study folder."""
    study_dir = Path(study_dir)
    if "groups" in analysis:
        blocks = _group_blocks(study_dir, plan, done, analysis)
    else:
        blocks = _blocks(study_dir, plan, done, analysis, _plots(done, analysis, study_dir / "report_files"))
    (study_dir / "report.md").write_text(_markdown(blocks, study_dir))
    path = study_dir / "report.html"
    path.write_text(_html(blocks, f"Study {plan['name']}"))
    return path
