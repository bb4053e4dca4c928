"""The genscale command line: a table from sub-command to a library function, no logic of its own."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from genscale.errors import GenscaleError

app = typer.Typer(help="Train, evaluate and sample generative models; measure what data and compute buy.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Built-in datasets and weights: fetch and describe.", no_args_is_help=True)
app.add_typer(data_app, name="data")
study_app = typer.Typer(help="Studies: grids of runs over data, model size and compute; fits, report, verdict.",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def friendly(fn):
    """Turn a GenscaleError into one red line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GenscaleError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


@data_app.command("fetch")
@friendly
def data_fetch(name: Annotated[str, typer.Argument(help="fashion-mnist, or fid-inception (FID weights)")],
               path: Annotated[Path | None, typer.Option(help="folder holding the dataset's files")] = None):
    """Fetch a built-in dataset (or the FID Inception weights) into the cache, verified by hash."""
    if name == "fashion-mnist":
        from genscale.data.builtin import fetch_fashion_mnist

        out.print(f"fashion-mnist: verified, cached at {fetch_fashion_mnist(path)}")
    elif name == "fid-inception":
        from genscale.metrics.inception import fetch_inception_weights

        out.print(f"fid-inception: verified, cached at {fetch_inception_weights(path)}")
    else:
        raise GenscaleError(f"data fetch: unknown name '{name}' (choose fashion-mnist or fid-inception)")


@data_app.command("info")
@friendly
def data_info(name: Annotated[str, typer.Argument(help="fashion-mnist, or a run config YAML")]):
    """Sizes, shape, classes and content version of a dataset (a built-in name or a config's data section)."""
    from genscale.config import RunConfig, load_config
    from genscale.data.builtin import BUILTIN_IMAGE_DATASETS
    from genscale.data.datasets import load_image_data

    if name.endswith((".yaml", ".yml")):
        cfg = load_config(name)
    elif name in BUILTIN_IMAGE_DATASETS:
        cfg = RunConfig.model_validate({"data": {"source": name}})
    else:
        raise GenscaleError(f"data info: '{name}' is neither a built-in dataset nor a .yaml config")
    s = load_image_data(cfg.data)
    out.print(json.dumps({"name": s.name, "version": s.version, "image_shape": s.image_shape,
                          "classes": s.num_classes, "train": len(s.full_train), "train_used": len(s.train),
                          "val": len(s.val), "test": len(s.test)}, indent=1))


@app.command()
@friendly
def train(config: Annotated[Path | None, typer.Argument(help="run config YAML (configs/*.yaml)")] = None,
          set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. train.steps=100")] = None,
          resume: Annotated[str | None, typer.Option(help="continue this run from its last checkpoint")] = None):
    """Train a model, evaluate it and apply the gate; every run is tracked in MLflow."""
    from genscale.pipeline import config_for_train
    from genscale.pipeline import train as train_run

    if resume and (config or set_):
        raise GenscaleError("train: --resume continues a run with its saved config; drop CONFIG and --set")
    cfg = None if resume else config_for_train(str(config) if config else None, set_ or [])
    run_dir = train_run(cfg, resume=resume)
    out.print(f"run folder: {run_dir}")


@app.command("eval")
@friendly
def eval_(run: Annotated[str, typer.Argument(help="run id, unique prefix, or folder")],
          extractor: Annotated[str | None, typer.Option(help="fmnist-classifier or inception")] = None,
          n: Annotated[int | None, typer.Option("--n", help="generated samples")] = None):
    """Compute FID/KID (and IS) of a run's EMA generator against the test split, then apply the gate."""
    from genscale.pipeline import evaluate_run, print_results

    if extractor not in (None, "fmnist-classifier", "inception"):
        raise GenscaleError(f"--extractor: unknown '{extractor}' (choose fmnist-classifier or inception)")
    records, gate = evaluate_run(run, extractor=extractor, n=n)
    print_results(records, gate)


@app.command()
@friendly
def sample(run: Annotated[str, typer.Argument(help="run id, unique prefix, or folder")],
           n: Annotated[int, typer.Option("-n", help="number of samples")] = 64,
           output: Annotated[Path, typer.Option("-o", "--output", help="PNG grid to write")] = Path("grid.png"),
           seed: Annotated[int, typer.Option(help="noise seed")] = 1234):
    """Write a grid of samples from a run's EMA generator."""
    from genscale.pipeline import sample_run

    if n < 1:
        raise GenscaleError(f"-n: must be at least 1, got {n}")
    out.print(f"wrote {sample_run(run, n=n, out=output, seed=seed)}")


@app.command()
@friendly
def runs(limit: Annotated[int, typer.Option(help="rows to show")] = 20,
         experiment: Annotated[str, typer.Option(help="MLflow experiment")] = "genscale"):
    """List tracked runs: id, family, dataset size, steps, FLOPs, metrics and gate."""
    from genscale.tracking import list_runs

    table = Table("id", "name", "status", "family/arch", "data size", "steps", "FLOPs", "metrics", "gate")
    for r in list_runs(experiment=experiment)[:limit]:
        m, p, t = r["metrics"], r["params"], r["tags"]
        shown = {k: v for k, v in m.items() if k.startswith(("fid", "kid", "is_"))}
        table.add_row(r["id"][:8], r["name"], r["status"], f"{t.get('family', '?')}/{t.get('arch', '?')}",
                      f"{m['data_size']:.0f}" if "data_size" in m else "-", p.get("train.steps", "-"),
                      f"{m['flops']:.3g}" if "flops" in m else "-",
                      " ".join(f"{k}={v:.3g}" for k, v in sorted(shown.items())) or "-", t.get("gate", "-"))
    (out if out.is_terminal else Console(width=250)).print(table)  # piped: do not squeeze to 80 columns


def _finish_study(analysis: dict, study_dir: Path) -> None:
    out.print(f"\n[bold]verdict:[/] {analysis['verdict']['sentence']}", highlight=False)
    if analysis["failed"]:
        out.print(f"{len(analysis['failed'])} trial(s) failed; see their error.json, or rerun them with "
                  f"`genscale study resume {study_dir}`", highlight=False)
    out.print(f"report: {study_dir / 'report.html'}  (Markdown: {study_dir / 'report.md'})", highlight=False)


@study_app.command("run")
@friendly
def study_run(study: Annotated[Path, typer.Argument(help="study YAML (configs/study-*.yaml)")],
              workers: Annotated[int | None, typer.Option(help="trials at once on a local Ray "
                                                                 "(default: CPU cores / cpus_per_trial)")] = None,
              ray_address: Annotated[str | None, typer.Option(help="address of an existing Ray cluster "
                                                                     "(the study folder must be shared)")] = None,
              out_dir: Annotated[Path | None, typer.Option("--out", help="study folder to create")] = None):
    """Check and expand a study, run its trials in parallel on Ray, fit scaling laws, write the report."""
    from genscale.study.execute import create_study, run_study

    if workers is not None and workers < 1:
        raise GenscaleError(f"--workers: must be at least 1, got {workers}")
    study_dir = create_study(study, out_dir)
    _finish_study(run_study(study_dir, workers=workers, ray_address=ray_address), study_dir)


@study_app.command("resume")
@friendly
def study_resume(folder: Annotated[Path, typer.Argument(help="study folder (runs/studies/...)")],
                 workers: Annotated[int | None, typer.Option(help="trials at once on a local Ray")] = None,
                 ray_address: Annotated[str | None, typer.Option(help="address of an existing Ray cluster")] = None):
    """Run the study's unfinished and failed trials (in-flight ones continue from their checkpoints), then report."""
    from genscale.study.execute import run_study

    if workers is not None and workers < 1:
        raise GenscaleError(f"--workers: must be at least 1, got {workers}")
    _finish_study(run_study(folder, workers=workers, ray_address=ray_address), folder)


@study_app.command("report")
@friendly
def study_report(folder: Annotated[Path, typer.Argument(help="study folder (runs/studies/...)")]):
    """Refit and rewrite the report from the trials finished so far; trains nothing."""
    from genscale.study.analysis import analyse_study

    _finish_study(analyse_study(folder), folder)


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
