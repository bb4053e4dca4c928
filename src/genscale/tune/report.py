"""The report of a tuning folder: the best configuration as a YAML to `genscale train`, each parameter's
importance (fANOVA, Hutter et al. 2014, as Optuna computes it), what pruning saved, the trials, and two plots
(optimisation history, parallel coordinates) drawn by Optuna's matplotlib functions."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import yaml

from genscale.config import config_with, saved_config
from genscale.paths import read_json, write_json
from genscale.tune.space import format_params


def _trial_row(t: Any) -> dict[str, Any]:
    folder = Path(t.user_attrs["run_dir"]) if "run_dir" in t.user_attrs else None
    row = {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
           "flops": t.user_attrs.get("flops"), "run_id": t.user_attrs.get("run_id"), "gate": t.user_attrs.get("gate"),
           "worker": t.user_attrs.get("worker"), "run_dir": str(folder) if folder else None}
    if t.state.name == "PRUNED" and folder and (folder / "pruned.json").exists():
        p = read_json(folder / "pruned.json", "pruned run record")
        row.update(stopped_at=p["step"], steps=p["steps"], full_flops=p["flops"] * p["steps"] / p["step"])
    if t.state.name == "FAIL":
        row["error"] = t.user_attrs.get("error")
    if t.datetime_start and t.datetime_complete:
        row["seconds"] = (t.datetime_complete - t.datetime_start).total_seconds()
    return row


def importances(study: Any) -> tuple[dict[str, float], str | None]:
    """(parameter -> fANOVA importance, None), or ({}, why not) when too few trials finished."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}, f"needs 2 finished trials (have {len(complete)})"
    if len(complete[0].params) == 1:  # fANOVA gives all the variance to the only parameter
        return {next(iter(complete[0].params)): 1.0}, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))), None
    except (RuntimeError, ValueError) as e:  # e.g. every finished trial had the same values
        return {}, str(e).splitlines()[0]


def _plots(study: Any, tune_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_parallel_coordinate

    written = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    plots = [("history.png", plot_optimization_history)]
    if complete and study.best_trial.params:
        plots.append(("parallel.png", plot_parallel_coordinate))
    for name, plot in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = plot(study)
        fig = (ax if hasattr(ax, "figure") else ax.flat[0]).figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        fig.savefig(tune_dir / name, dpi=100)
        plt.close(fig)
        written.append(name)
    return written


def write_report(tune_dir: Path) -> dict[str, Any]:
    """report.md, summary.json, best.yaml and the plots of a tuning folder; returns the summary."""
    from genscale.tune.search import load_study, read_plan, spent_flops

    tune_dir = Path(tune_dir)
    plan = read_plan(tune_dir)
    study = load_study(plan)
    rows = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    metric = next((t.user_attrs["metric"] for t in complete if "metric" in t.user_attrs), "value")
    budget = next((t.user_attrs["budget"] for t in complete if "budget" in t.user_attrs), "")
    best = None
    if complete:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": b.params, "run_id": b.user_attrs.get("run_id"),
                "gate": b.user_attrs.get("gate"), "run_dir": b.user_attrs.get("run_dir")}
        base = saved_config(plan["config"], "tune.json config")
        cfg = config_with(base, b.params, f"trial {b.number}")
        header = (f"# The best of {len(rows)} trials of tuning {plan['name']}: trial {b.number}, {metric} "
                  f"{b.value:.6g} ({budget}); run {best['run_id']}.\n# Train it again: genscale train "
                  f"{tune_dir / 'best.yaml'}\n")
        (tune_dir / "best.yaml").write_text(header + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        best["config"] = str(tune_dir / "best.yaml")
    imp, why = importances(study)
    pruned = [r for r in rows if r["state"] == "PRUNED" and "full_flops" in r]
    spent = spent_flops(study)
    pruning = {"pruned": sum(r["state"] == "PRUNED" for r in rows),
               "flops_spent_on_pruned": sum(r["flops"] for r in pruned),
               "flops_saved": sum(r["full_flops"] - r["flops"] for r in pruned)}
    pruning["saved_share"] = pruning["flops_saved"] / (spent + pruning["flops_saved"]) if spent else 0.0
    plots = _plots(study, tune_dir) if rows else []
    summary = {"name": plan["name"], "metric": metric, "budget": budget, "storage": plan["storage"],
               "sampler": plan["sampler"], "pruner": plan["pruner"], "trials": rows, "best": best,
               "importance": imp, "importance_note": why, "spent_flops": spent, "pruning": pruning, "plots": plots,
               "report": str(tune_dir / "report.md")}
    write_json(tune_dir / "summary.json", summary)
    (tune_dir / "report.md").write_text(_markdown(summary, plan, tune_dir))
    return summary


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _markdown(s: dict[str, Any], plan: dict[str, Any], tune_dir: Path) -> str:
    lines = [f"# Tuning {s['name']}", "",
             f"{len(s['trials'])} trials ({s['sampler']} sampler, {s['pruner']} pruner), objective: {s['metric']} "
             f"at the last point of each run's metric curve ({s['budget']}), lower is better. Storage "
             f"`{s['storage']}` (`optuna-dashboard {s['storage']}` shows the study live).", ""]
    b = s["best"]
    if b:
        lines += ["## Best", "", f"Trial {b['number']}: {s['metric']} **{b['value']:.4g}**"
                  + (f", gate {b['gate']}" if b["gate"] else "") + f", run `{b['run_id']}`.", "",
                  *(f"- `{k}` = {_fmt(v)}" for k, v in b["params"].items()), "",
                  f"Train it again: `genscale train {b['config']}`", ""]
    else:
        lines += ["No trial finished: no best configuration.", ""]
    lines += ["## Importance", ""]
    if s["importance"]:
        lines += ["| parameter | importance (fANOVA) |", "|---|---|",
                  *(f"| `{k}` | {v:.3f} |" for k, v in s["importance"].items()), ""]
    else:
        lines += [f"Not computed: {s['importance_note']}.", ""]
    p = s["pruning"]
    lines += ["## Pruning", "", f"{p['pruned']} trials pruned; they trained {p['flops_spent_on_pruned']:.3g} FLOPs and "
              f"saved {p['flops_saved']:.3g} ({100 * p['saved_share']:.0f}% of what every trial trained to its end "
              f"would have cost). All trials: {s['spent_flops']:.3g} training FLOPs.", ""]
    lines += ["## Trials", "", "| # | state | " + s["metric"] + " | gate | FLOPs | parameters | run |",
              "|---|---|---|---|---|---|---|"]
    for r in s["trials"]:
        state = r["state"] + (f" at step {r['stopped_at']}" if "stopped_at" in r else "")
        lines.append(f"| {r['number']} | {state} | {_fmt(r['value']) if r['value'] is not None else '-'} | "
                     f"{r['gate'] or '-'} | {_fmt(r['flops']) if r['flops'] else '-'} | "
                     + format_params(r["params"]) + f" | {r['run_id'] or '-'} |")
    lines.append("")
    lines += [f"![{name}]({name})" for name in s["plots"]]
    return "\n".join(lines) + "\n"
