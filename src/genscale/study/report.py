"""The study report: one self-contained HTML file (plots and sample grids inlined) and a Markdown twin.

Plots (matplotlib, Agg): the metric against D per compute level and against C per data level with the fitted
L(C, D) drawn through them (iso-compute and iso-data curves), the fitted surface with the observed trials,
iso-FLOP curves over model size when the compute-optimal law was fitted, and the log residuals.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from genscale.study.analysis import compute_level
from genscale.study.fit import PowerLaw


def _law(d: dict[str, Any]) -> PowerLaw:
    p = d["params"]
    axes = tuple(d["axes"])
    return PowerLaw(axes=axes, E=p["E"], A=tuple(p[f"A[{a}]"] for a in axes),
                    alpha=tuple(p[f"alpha[{a}]"] for a in axes))


def _plots(done: list[dict[str, Any]], analysis: dict[str, Any], folder: Path) -> list[tuple[str, Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = analysis["metric"]
    folder.mkdir(parents=True, exist_ok=True)
    pts = [p for p in done if metric in p["metrics"]]
    if not pts:
        return []
    y = np.array([p["metrics"][metric] for p in pts])
    surface = analysis["laws"].get("L(C, D)")
    law = _law(surface) if surface else None
    made: list[tuple[str, Path]] = []

    def save(fig, name: str, title: str) -> None:
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append((title, path))

    for x_key, group_key, x_label, group_label, name in (
            ("D", "C", "unique training examples D", "compute C", "metric_vs_data"),
            ("C", "D", "training FLOPs C", "data D", "metric_vs_compute")):
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
                    label=f"{group_label} {g_value:.3g}")
            if law is not None:
                grid = np.geomspace(xs.min(), xs.max(), 50)
                pair = np.column_stack([np.full_like(grid, g_value), grid] if x_key == "D"
                                       else [grid, np.full_like(grid, g_value)])
                ax.plot(grid, law.predict(pair), "-", color=cmap(i), alpha=0.7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        ax.set_title(f"{metric} vs {x_key}; lines: fitted L(C, D)", fontsize=9)
        save(fig, name, f"{metric} against {x_label}, one colour per {group_label} level")

    if law is not None:
        c = np.array([p["C"] for p in pts], dtype=float)
        d = np.array([p["D"] for p in pts], dtype=float)
        cg, dg = np.meshgrid(np.geomspace(c.min(), c.max(), 60), np.geomspace(d.min(), d.max(), 60))
        z = law.predict(np.column_stack([cg.ravel(), dg.ravel()])).reshape(cg.shape)
        fig, ax = plt.subplots(figsize=(6, 4))
        cs = ax.contourf(cg, dg, z, levels=15, cmap="viridis_r")
        fig.colorbar(cs, label=f"fitted {metric}")
        ax.scatter(c, d, c=y, cmap="viridis_r", edgecolors="white", s=50, vmin=z.min(), vmax=z.max())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs C")
        ax.set_ylabel("unique examples D")
        ax.set_title("fitted surface L(C, D); dots: observed trials (same colour scale)", fontsize=9)
        save(fig, "surface", "fitted surface with the observed trials")

        resid = np.log(y) - np.log(law.predict(np.column_stack([c, d])))
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.axhline(0, color="grey", lw=1)
        ax.plot(range(len(resid)), resid, "o")
        ax.set_xticks(range(len(resid)), [p["trial"].split("-")[0] for p in pts], rotation=90, fontsize=6)
        ax.set_ylabel("log observed - log fitted")
        ax.set_title(f"residuals of L(C, D) (rmse {surface['rmse_log']:.3f} in log units)", fontsize=9)
        save(fig, "residuals", "log residuals of the fitted surface per trial")

    opt = analysis.get("compute_optimal", {})
    if opt.get("available"):
        nl = _law(opt["law"])
        k = opt["flops_per_param_example"]
        n = np.array([p["N"] for p in pts], dtype=float)
        fig, ax = plt.subplots(figsize=(6, 4))
        grid = np.geomspace(n.min() / 2, n.max() * 2, 60)
        for budget in sorted({p["C"] for p in pts})[::max(1, len({p["C"] for p in pts}) // 5)]:
            ax.plot(grid, nl.predict(np.column_stack([grid, budget / (k * grid)])), label=f"C = {budget:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("parameters N (generator + discriminator)")
        ax.set_ylabel(f"fitted {metric}")
        ax.legend(fontsize=7)
        ax.set_title("iso-FLOP curves of L(N, S), S = C / (k N)", fontsize=9)
        save(fig, "iso_flop", "iso-FLOP curves over model size")
    return made


def _img(path: Path, width: int | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    w = f' width="{width}"' if width else ""
    return f'<img src="data:image/png;base64,{data}"{w} alt="{html.escape(path.name)}">'


def _trial_rows(done: list[dict[str, Any]], failed: list[dict[str, Any]], metric: str) -> tuple[list[str], list[list]]:
    head = ["trial", "axes", "D", "N", "C (FLOPs)", "epochs", "train s", "device", metric, "status"]
    rows = [[r["trial"], " ".join(f"{k}={v}" for k, v in r["axes"].items()), f"{r['D']}", f"{r['N']}",
             f"{r['C']:.3g}", f"{r['epochs']:.2f}", f"{r['train_seconds']:.0f}", r["device"],
             f"{r['metrics'].get(metric, float('nan')):.4g}", "done"] for r in done]
    rows += [[f["trial"], "", "", "", "", "", "", "", "", "failed: " + f["error"].splitlines()[0][:200]]
             for f in failed]
    return head, rows


def _law_lines(analysis: dict[str, Any]) -> list[str]:
    lines = []
    for name, law in analysis["laws"].items():
        ci = law.get("intervals", {})
        parts = [f"{k} = {v:.4g}" + (f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" if k in ci else "")
                 for k, v in law["params"].items()]
        fit = f"R² (log) {law['r2_log']:.3f}, rmse (log) {law['rmse_log']:.3f}"
        lines.append(f"{name}: " + ", ".join(parts) + f"; {fit}")
    for name, why in analysis["skipped"].items():
        lines.append(f"{name}: not fitted ({why})")
    dc = analysis["data_constrained"]
    if dc["available"]:
        p = dc["law"]["params"]
        lines.append(f"L(D') data-constrained (Muennighoff et al. 2023), R_D* = {dc['r_star']:.3g} "
                     f"({dc['r_star_source']}): E = {p['E']:.4g}, B = {p['A[D_eff]']:.4g}, "
                     f"beta = {p['alpha[D_eff]']:.4g}; R² (log) {dc['law']['r2_log']:.3f}")
    else:
        lines.append(f"L(D') data-constrained: not fitted ({dc['reason']})")
    opt = analysis["compute_optimal"]
    if opt["available"]:
        lo, hi = opt["N_opt_interval"]
        k = opt["flops_per_param_example"]
        lines.append(f"Compute-optimal split at C0 = {opt['C0']:.3g}: N_opt = {opt['N_opt']:.3g} [{lo:.3g}, "
                     f"{hi:.3g}] parameters, S_opt = {opt['S_opt']:.3g} examples processed (k = {k:.3g} FLOPs "
                     "per parameter per example)")
    else:
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


def _fmt_value(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def write_report(study_dir: Path, plan: dict[str, Any], done: list[dict[str, Any]], analysis: dict[str, Any]) -> Path:
    """Write report.html (self-contained) and report.md (+ report_files/) into the study folder."""
    files = study_dir / "report_files"
    plots = _plots(done, analysis, files)
    metric = analysis["metric"]
    v = analysis["verdict"]
    head, rows = _trial_rows(done, analysis["failed"], metric)
    extractor = done[0]["extractor"] if done else "-"
    study_text = (study_dir / "study.yaml").read_text()
    base_text = json.dumps(plan["trials"][0]["config"], indent=1)
    provenance = [f"dataset: {plan['dataset']} version {plan['dataset_version']} "
                  f"({plan['full_data_size']} training examples)", f"feature extractor: {extractor}",
                  f"trials: {len(done)} done, {len(analysis['failed'])} failed of {analysis['trials_total']}"]
    gpus = v.get("gpus_2x")
    law_lines = _law_lines(analysis)

    # Markdown twin
    md = [f"# Study {plan['name']}", "", "## Verdict", "", v["sentence"], ""]
    if gpus:
        md += [f"2× GPUs at equal wall time: {gpus['note']}.", ""]
    comparisons = _comparison_tables(analysis)
    fitted_at = ", ".join(f"{a}={v}" for a, v in analysis.get("laws_fitted_at", {}).items())
    if fitted_at:
        law_lines = [f"Laws are fitted to the trials at {fitted_at} (a law mixes no treatments)"] + law_lines
    for title, head, rows, lines in comparisons:
        md += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        md += ["| " + " | ".join(r) + " |" for r in rows] + [""] + [f"- {line}" for line in lines] + [""]
    md += ["## Fits", ""] + [f"- {line}" for line in law_lines] + ["", "## Plots", ""]
    md += [f"![{title}](report_files/{path.name})" for title, path in plots]
    md += ["", "## Trials", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    md += ["", "## Samples", ""]
    for r in done:
        grid = study_dir / "trials" / r["trial"] / "samples.png"
        if grid.exists():
            md.append(f"- {r['trial']}: ![{r['trial']}](trials/{r['trial']}/samples.png)")
    md += ["", "## Provenance", ""] + [f"- {p}" for p in provenance]
    md += ["", "Study file:", "", "```yaml", study_text.rstrip(), "```", "", "Resolved run config of the first trial:",
           "", "```json", base_text, "```", ""]
    (study_dir / "report.md").write_text("\n".join(md))

    # HTML, self-contained
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Study {e(plan['name'])}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
             ".verdict{font-size:1.15em;background:#f4f4f4;padding:0.8em;border-left:4px solid #356}"
             ".grids{display:flex;flex-wrap:wrap;gap:8px}.grids figure{margin:0;font-size:11px}</style></head><body>",
             f"<h1>Study {e(plan['name'])}</h1><h2>Verdict</h2><p class='verdict'>{e(v['sentence'])}</p>"]
    if gpus:
        parts.append(f"<p>2× GPUs at equal wall time: {e(gpus['note'])}.</p>")
    for title, head, rows, lines in comparisons:
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                     + "</table><ul>" + "".join(f"<li>{e(line)}</li>" for line in lines) + "</ul>")
    parts.append("<h2>Fits</h2><ul>" + "".join(f"<li>{e(line)}</li>" for line in law_lines) + "</ul><h2>Plots</h2>")
    parts += [f"<figure>{_img(path)}<figcaption>{e(title)}</figcaption></figure>" for title, path in plots]
    parts.append("<h2>Trials</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows]
    parts.append("</table><h2>Samples</h2><div class='grids'>")
    for r in done:
        grid = study_dir / "trials" / r["trial"] / "samples.png"
        if grid.exists():
            parts.append(f"<figure>{_img(grid, 160)}<figcaption>{e(r['trial'])}</figcaption></figure>")
    parts.append("</div><h2>Provenance</h2><ul>" + "".join(f"<li>{e(p)}</li>" for p in provenance) + "</ul>")
    parts.append(f"<h3>Study file</h3><pre>{e(study_text)}</pre>")
    parts.append(f"<h3>Resolved run config of the first trial</h3><pre>{e(base_text)}</pre></body></html>")
    path = study_dir / "report.html"
    path.write_text("".join(parts))
    return path
