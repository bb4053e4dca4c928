"""Create a study folder from a study YAML, run its trials on Ray, and resume it after a crash or kill.

Layout of a study folder (`<runs>/studies/<name>-<time>/`):
  study.yaml            the study file as given          plan.json   trials, resolved configs, parent run id
  trials/<id>/          an ordinary run folder per trial (config.yaml, checkpoints/, metrics.json, samples.png)
  trials/<id>/result.json   written last, atomically: the trial is done   trials/<id>/error.json   it failed
  report.html, report.md, analysis.json

Each trial runs in a fresh Ray worker process (`max_calls=1`), so a crash in one never takes down the study
or another trial; `resume` reruns every trial without a result, and in-flight trials continue from their
checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from genscale.config import resolve_preset, saved_config
from genscale.errors import GenscaleError
from genscale.families import family_of
from genscale.families.image import KEY_SAMPLING_SECONDS
from genscale.paths import cache_dir, read_json, runs_dir, write_json
from genscale.study.spec import StudyConfig, Trial, check_data_sizes, check_metric, expand_grid, load_study
from genscale.ui import VERBOSE, VERBOSITY_ENV, console, progress, set_verbosity, verbosity


def read_plan(study_dir: Path) -> dict[str, Any]:
    path = Path(study_dir) / "plan.json"
    if not path.exists():
        raise GenscaleError(f"{study_dir}: not a study folder (no plan.json)")
    return read_json(path, "study plan")


@dataclass
class StudyPlan:
    """An expanded, checked study before anything is written: its trials (steps resolved) and what they plan."""

    study: StudyConfig
    trials: list[Trial]
    planned_flops: dict[str, int]  # trial id -> counted FLOPs of one step x its steps
    data: dict[str, Any]  # trial id -> its dataset, whole (before data.size cuts it)
    full: Any  # the smallest dataset: the one the operating point's data size is checked against
    full_size: int
    operating_size: int
    operating_flops: float


def plan_study(path: str | Path, *, store: bool = True) -> StudyPlan:
    """Expand and check the study: axes, metric, data sizes, FLOP budgets resolved to steps, the operating point.
    `store=False` writes nothing anywhere: a trial training on a cleaned dataset (data.clean) is planned on the
    version it would clean (its shapes, hence FLOPs per step, are the same), since cleaning stores a version."""
    from genscale.pipeline import load_data

    path = resolve_preset(path, "study")
    study, base = load_study(path)
    origin = str(path)
    trials = expand_grid(study, base, origin)
    check_metric(study, trials, origin)
    fulls: dict[str, Any] = {}  # one load per distinct data source (raw and cleaned, tokenizers); all cached
    full_sizes: dict[str, int] = {}  # its unique training examples before data.size cuts them
    data_key: dict[str, str] = {}  # trial id -> its key in fulls
    for t in trials:
        whole_data = {"size": None, "augment": "none", **({} if store else {"clean": False})}
        whole = t.config.model_copy(update={"data": t.config.data.model_copy(update=whole_data)})
        key = whole.data.model_dump_json() + whole.model.family + str(getattr(whole.model, "init_from", None))
        if key not in fulls:
            fulls[key] = load_data(whole)
            full_sizes[key] = family_of(whole).full_size(fulls[key])
        check_data_sizes([t], full_sizes[key], origin)
        data_key[t.id] = key
    smallest = min(full_sizes, key=full_sizes.__getitem__)
    full, full_size = fulls[smallest], full_sizes[smallest]
    counted: dict[str, int] = {}  # counted FLOPs of one step, per distinct model and step shape

    def flops_per_step(t: Trial) -> int:
        c = t.config
        key = c.model.model_dump_json() + c.train.model_dump_json(exclude={"steps", "seed"})
        if key not in counted:
            counted[key] = family_of(c).flops_per_step(c, fulls[data_key[t.id]])
        return counted[key]

    if "train.flops" in study.axes:  # a FLOP budget becomes a step count: budget / counted FLOPs of one step
        for t in trials:
            t.config.train.steps = max(1, round(float(t.axes["train.flops"]) / flops_per_step(t)))
    planned = {t.id: flops_per_step(t) * t.config.train.steps for t in trials}
    sizes = {t.id: t.config.data.size or full_sizes[data_key[t.id]] for t in trials}
    operating_size = study.operating_point.data_size or max(sizes.values())
    if operating_size > full_size:
        raise GenscaleError(f"{origin}: operating_point.data_size {operating_size} is larger than the dataset's "
                            f"{full_size} training examples")
    operating_flops = study.operating_point.flops or max(planned.values())
    check_operating_point(origin, operating_size, operating_flops, list(sizes.values()), list(planned.values()),
                          study.fit.max_extrapolation)
    if study.verify:
        trials += verify_trials(study, trials, planned, operating_size, operating_flops, full_size,
                                flops_per_step, data_key)
        planned.update({t.id: flops_per_step(t) * t.config.train.steps for t in trials if t.role == "verify"})
    return StudyPlan(study, trials, planned, {t.id: fulls[data_key[t.id]] for t in trials}, full, full_size,
                     operating_size, operating_flops)


def create_study(path: str | Path, out: Path | None = None) -> Path:
    """Expand and check the study, then write its folder; nothing trains here, so bad input costs nothing."""
    require_ray()  # before anything is written or tracked (a dry run, which runs no trial, needs no Ray)
    path = resolve_preset(path, "study")
    p = plan_study(path)
    study, trials = p.study, p.trials
    study_dir = out or runs_dir() / "studies" / f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if study_dir.exists() and any(study_dir.iterdir()):
        raise GenscaleError(f"{study_dir}: folder exists and is not empty; resume it with `genscale study resume`")

    from genscale.tracking import Tracker

    cfg0 = trials[0].config
    parent = Tracker(cfg0.tracking.uri, cfg0.tracking.experiment, run_name=study.name,
                     tags={"genscale.study": study.name, "family": cfg0.model.family, "arch": cfg0.model.arch})
    (study_dir / "trials").mkdir(parents=True, exist_ok=True)
    (study_dir / "study.yaml").write_text(Path(path).read_text())
    plan = {"name": study.name, "study": study.model_dump(mode="json"), "parent_run_id": parent.run_id,
            "dataset": p.full.name, "dataset_version": p.full.version, "full_data_size": p.full_size,
            "operating_data_size": p.operating_size,
            "operating_flops": p.operating_flops,
            "trials": [{"id": t.id, "axes": t.axes, "config": t.config.model_dump(mode="json"), "role": t.role,
                        "planned_flops": p.planned_flops[t.id]} for t in trials]}
    write_json(study_dir / "plan.json", plan)
    parent.log_params({"study": study.model_dump(mode="json")})
    parent.set_tags({"study.folder": str(study_dir.absolute()), "study.trials": len(trials)})
    parent.client.update_run(parent.run_id, status="SCHEDULED")
    return study_dir


def default_workers(cpus_per_trial: float) -> int:
    """Trials at once on a local Ray when --workers is not given: the CPU cores over cpus_per_trial."""
    return max(1, int((os.cpu_count() or 1) // cpus_per_trial))


def dry_run(path: str | Path, *, workers: int | None = None) -> dict[str, Any]:
    """What `study run` would train, and its cost, creating nothing: every trial's axes, steps and training FLOPs
    counted by a one-step probe of its config on its configured device (train/loop.py `probe_step`; one probe per
    distinct model, step and data shape), and the wall time of their training steps on `workers` workers.

    The estimate is training only (no evaluation, start-up, checkpoints or the GPU probe), from one uncounted step
    at resources.cpus_per_trial torch threads; trials start in plan order on the first free worker, as Ray starts
    them. A data-parallel trial (train.gpus > 1) is probed on one process: its FLOPs are the same total, its time
    that of one process doing the whole batch (an upper bound)."""
    import torch

    from genscale.config import config_with
    from genscale.train.loop import probe_step

    p = plan_study(path, store=False)
    res = p.study.resources
    workers = workers or default_workers(res.cpus_per_trial)
    probes: dict[str, dict[str, Any]] = {}  # probe key -> its probe
    probe_of: dict[str, dict[str, Any]] = {}  # trial id -> its probe
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(res.cpus_per_trial)))  # what a trial's worker gets (OMP_NUM_THREADS)
    try:
        for t in p.trials:
            c = t.config
            key = c.model.model_dump_json() + c.data.model_dump_json() + c.train.model_dump_json(
                exclude={"steps", "seed", "checkpoint_every", "log_every"})  # what a step's work depends on
            if key not in probes:
                one = config_with(c, {"train.gpus": 1, "data.clean": False}, f"trial {t.id} probe")
                probes[key] = probe_step(one, family_of(one).load_data(one, None))
            probe_of[t.id] = probes[key]
    finally:
        torch.set_num_threads(threads)
    rows = []
    free = [0.0] * workers  # when each worker is next free
    for t in p.trials:
        probe = probe_of[t.id]
        seconds = probe["step_seconds"] * t.config.train.steps
        start = min(free)
        free[free.index(start)] = start + seconds
        rows.append({"id": t.id, "role": t.role, "axes": t.axes, "steps": t.config.train.steps,
                     "flops_per_step": probe["flops"], "flops": probe["flops"] * t.config.train.steps,
                     "planned_flops": p.planned_flops[t.id], "device": probe["device"],
                     "step_seconds": probe["step_seconds"], "train_seconds": seconds})
    return {"study": p.study.name, "trials": rows, "workers": workers, "probes": len(probes),
            "flops": sum(r["flops"] for r in rows), "wall_seconds": max(free),
            "cleaned_data_probed_raw": any(t.config.data.clean for t in p.trials)}


def check_operating_point(origin: str, d0: float, c0: float, sizes: list[float], flops: list[float], factor: float
                          ) -> None:
    """The verdict's operating point (and its 2x) must lie within `factor` of the range the grid observes: a plan whose
    verdict could only be an extrapolation fails before anything trains (the verdict's own rule, within_reach)."""
    from genscale.study.analysis import within_reach

    for name, key, value, seen in (("D0", "operating_point.data_size", d0, sizes),
                                   ("C0", "operating_point.flops", c0, flops)):
        lo, hi = min(seen), max(seen)
        if not within_reach(value, lo, hi, factor):
            raise GenscaleError(f"{origin}: {key}: the verdict's {name} = {value:.4g} (and its 2x) lies more than "
                                f"{factor:g}x outside the {lo:.4g}-{hi:.4g} the trials observe; set {key} inside that "
                                "range, or add trials that reach it (fit.max_extrapolation sets the factor)")


def verify_trials(study: Any, trials: list[Trial], planned: dict[str, float], d0: int, c0: float, full_size: int,
                  flops_per_step: Any, data_key: dict[str, str]) -> list[Trial]:
    """`verify: true`: the two trials the verdict is about, 2x data and 2x compute at the operating point, built from
    the grid's largest-compute trial (its model and settings); kept out of every fit and compared with the prediction.
    An arm that would need more data than the dataset has is left out (the analysis says so)."""
    model = max(trials, key=lambda t: planned[t.id])
    fps = flops_per_step(model)
    out = []
    for name, size, flops in (("data2x", 2 * d0, c0), ("compute2x", d0, 2 * c0)):
        if size > full_size:
            console.print(f"note: verify: the 2x-data trial would need {size} training examples; the dataset has "
                          f"{full_size}, so only the 2x-compute arm is run", highlight=False)
            continue
        cfg = model.config.model_copy(deep=True)
        cfg.data.size = size if size < full_size else None
        cfg.train.steps = max(1, round(flops / fps))
        trial_id = f"v{len(out):02d}-verify-{name}"
        cfg.name = f"{study.name}/{trial_id}"
        axes = {**model.axes, "verify": name}
        for axis, value in (("data.size", size), ("train.steps", cfg.train.steps), ("train.flops", flops)):
            if axis in axes:  # the arm's own values, not its model trial's
                axes[axis] = value
        out.append(Trial(trial_id, axes, cfg, role="verify"))
        data_key[trial_id] = data_key[model.id]
    return out


def trials_of(plan: dict[str, Any]) -> list[Trial]:
    return [Trial(t["id"], t["axes"], saved_config(t["config"], f"plan.json trial {t['id']}"), t.get("role", "grid"))
            for t in plan["trials"]]


def trial_status(study_dir: Path, trial_id: str) -> str:
    folder = study_dir / "trials" / trial_id
    if (folder / "result.json").exists():
        return "done"
    if (folder / "error.json").exists():
        return "failed"
    return "running" if (folder / "config.yaml").exists() else "pending"


def _redirect_output(path: Path) -> None:
    """Send this (dedicated) worker process's stdout and stderr, C level included, to the trial's log."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def train_trial(study_dir: str, trial_id: str) -> None:
    """Train (or continue) one trial in its folder: what each rank of a data-parallel trial runs, too."""
    from genscale.pipeline import train

    folder = Path(study_dir) / "trials" / trial_id
    plan = read_plan(Path(study_dir))
    entry = next(t for t in plan["trials"] if t["id"] == trial_id)
    if (folder / "config.yaml").exists():
        train(resume=str(folder))
    else:
        cfg = saved_config(entry["config"], f"plan.json trial {trial_id}")
        train(cfg, run_dir=folder, tags={"mlflow.parentRunId": plan["parent_run_id"],
                                         "genscale.study": plan["name"], "genscale.trial": trial_id})


def execute_trial(study_dir: str, trial_id: str, env: dict[str, str]) -> dict[str, Any]:
    """Run (or continue) one trial to the end; returns its result, or {'error': ...} if it failed.

    Runs inside its own Ray worker process. The result is written last, so a trial with a result.json is
    complete; anything else is rerun by `resume`, continuing from the trial's own checkpoints. A trial of
    train.gpus N > 1 starts its N ranks from this worker (train/distributed.py `launch`), so they share its node.
    """
    os.environ.update(env)
    set_verbosity(verbosity())  # this worker was started (and genscale imported) before its environment was set
    from genscale.pipeline import tracked_run_id
    from genscale.train.distributed import launch

    folder = Path(study_dir) / "trials" / trial_id
    folder.mkdir(parents=True, exist_ok=True)
    _redirect_output(folder / "log.txt")
    plan = read_plan(Path(study_dir))
    entry = next(t for t in plan["trials"] if t["id"] == trial_id)
    gpus = saved_config(entry["config"], f"plan.json trial {trial_id}").train.gpus
    started = time.time()
    try:
        if gpus > 1:
            status = launch(["-m", "genscale.study.execute", study_dir, trial_id], gpus,
                            threads=int(env.get("OMP_NUM_THREADS", 1)))
            if status:
                raise GenscaleError(f"its {gpus} data-parallel processes failed (exit status {status}); the first "
                                    f"error is in {folder / 'log.txt'}")
        else:
            train_trial(study_dir, trial_id)
    except (KeyboardInterrupt, SystemExit):
        # interrupted, not failed: Ray tears the worker down this way when the study's driver dies; the trial stays
        # in flight and `study resume` continues it from its checkpoints (a late error.json would race the resume)
        raise
    except BaseException as e:  # noqa: BLE001  every failure is recorded; the study goes on
        error = {"trial": trial_id, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        write_json(folder / "error.json", error)
        return error
    summary = json.loads((folder / "summary.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    result = {
        "trial": trial_id, "axes": entry["axes"], "role": entry.get("role", "grid"), "run_id": tracked_run_id(folder),
        "family": summary["family"], "D": summary["data_size"], "N": summary["params"],
        **{k: summary[k] for k in ("params_g", "params_d", "tokenizer", "vocab_size", "latent_dim",
                                   "sampling_steps", "sampling_flops_per_image") if k in summary},
        "C": summary["flops"], "steps": summary["steps"],
        "examples_seen": summary["steps"] * summary["examples_per_step"],
        "epochs": summary["epochs"], "train_seconds": summary["train_seconds"],
        "wall_seconds": time.time() - started, "device": summary["device"],
        **{k: summary.get(k) for k in ("world_size", "step_seconds", "examples_per_second", "mfu",
                                       "peak_flops_source")},
        "dataset": summary["dataset"], "dataset_version": summary["dataset_version"],
        "metrics": {k: v["value"] for k, v in metrics.items() if k != KEY_SAMPLING_SECONDS},  # a time varies by run
        KEY_SAMPLING_SECONDS: metrics.get(KEY_SAMPLING_SECONDS, {}).get("value"),
        "extractor": next(v["extractor"] for v in metrics.values() if "extractor" in v),
        "best": _best_of(folder),
    }
    write_json(folder / "result.json", result)
    return result


def _best_of(folder: Path) -> dict[str, Any] | None:
    """The trial's best checkpoint (eval.every): its step, the curve's value and its metrics at the full budget."""
    path = folder / "best.json"
    best = read_json(path, "best checkpoint record") if path.exists() else None
    return best if best and "metrics" in best else None


def prepare_evaluation(trial: Trial, study_dir: Path, metric: str) -> None:
    """Prepare and cache what evaluation needs, once, before trials race to do it (the feature extractor and the
    reference features, or the tokenizer and the tokenized shards), and write floor.json: the lowest value the metric
    can take at the trials' sample counts (FID: the real-vs-real FID of as many training images as generated samples,
    against the same test images; a loss: 0), which bounds the laws' irreducible term from below."""
    from genscale.pipeline import load_data

    cfg = trial.config
    write_json(study_dir / "floor.json", family_of(cfg).floor(cfg, load_data(cfg), metric))


def trial_resources(trial: Trial, res: dict[str, float]) -> dict[str, float]:
    """What a trial asks Ray for: a trial of train.gpus N takes N GPUs (with GPUs per trial), else N CPU workers'
    cores (N gloo processes); one Ray task launches all its ranks, so they always share one node."""
    n = trial.config.train.gpus
    if res["gpus_per_trial"] > 0:
        return {"num_cpus": res["cpus_per_trial"], "num_gpus": res["gpus_per_trial"] * n}
    return {"num_cpus": res["cpus_per_trial"] * n, "num_gpus": 0}


RAY_MISSING = "study runs need Ray: pip install 'genscale[study]'"


def require_ray():
    """The ray module. Ray is the `study` extra: a plain install trains, evaluates, tunes and serves without it, so a
    study says what to install before it writes or trains anything."""
    try:
        import ray
    except ImportError:
        raise GenscaleError(RAY_MISSING) from None
    return ray


def _start_ray(workers: int, cpus_per_trial: float, gpus_per_trial: float, address: str | None,
               largest: dict[str, float] | None = None):
    ray = require_ray()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, private instance: no token to manage
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
                              "logging_level": logging.INFO if verbosity() == VERBOSE else logging.ERROR}
    if address:
        ray.init(address=address, **kwargs)
    else:  # exactly `workers` trials fit at once (and at least the largest trial)
        largest = largest or {"num_cpus": cpus_per_trial, "num_gpus": gpus_per_trial}
        ray.init(num_cpus=max(1, round(workers * cpus_per_trial), math.ceil(largest["num_cpus"])),
                 num_gpus=max(round(workers * gpus_per_trial), math.ceil(largest["num_gpus"])),
                 object_store_memory=100 * 1024**2, **kwargs)
    return ray


def run_study(study_dir: Path, *, workers: int | None = None, ray_address: str | None = None) -> dict[str, Any]:
    """Run every trial that has no result yet, then fit and report. Returns the analysis."""
    from genscale.study.analysis import analyse_study
    from genscale.tracking import Tracker

    require_ray()
    study_dir = Path(study_dir).absolute()
    plan = read_plan(study_dir)
    trials = trials_of(plan)
    res = plan["study"]["resources"]
    workers = workers or default_workers(res["cpus_per_trial"])
    pending = [t for t in trials if trial_status(study_dir, t.id) != "done"]
    cfg0 = trials[0].config
    parent = Tracker(cfg0.tracking.uri, cfg0.tracking.experiment, run_id=plan["parent_run_id"])
    console.print(f"study {plan['name']}: {len(trials)} trials, {len(trials) - len(pending)} already done, "
                  f"{len(pending)} to run on {workers if not ray_address else 'the cluster'} "
                  f"{'worker' if workers == 1 else 'workers'}  ({study_dir})")
    if pending:
        with console.status("preparing the evaluation: feature extractor and reference features, or tokenized "
                            "text (cached after first use)"):
            prepare_evaluation(pending[0], study_dir, plan["study"]["metric"])
        for t in pending:  # a failed trial starts again from its checkpoints
            (study_dir / "trials" / t.id / "error.json").unlink(missing_ok=True)
        _run_on_ray(study_dir, pending, workers, res, ray_address, plan["study"]["metric"])
    probe = probe_gpu_scaling(study_dir, plan)
    if probe and "error" not in probe:
        console.print(f"GPU probe ({probe['steps']} steps of {probe['of_trial']} on 1 and "
                      f"{probe['results'][-1]['world_size']} processes): {probe['cost_seconds']:.0f} s",
                      highlight=False)
    analysis = analyse_study(study_dir)
    parent.log_metrics({k: v for k, v in analysis["summary_metrics"].items() if v is not None}, 0)
    parent.set_tags({"study.verdict": analysis["verdict"]["sentence"][:5000]})
    for name in ("report.html", "report.md", "analysis.json"):
        parent.log_artifact(study_dir / name)
    failed = [t.id for t in trials if trial_status(study_dir, t.id) == "failed"]
    parent.finish("FAILED" if len(failed) == len(trials) else "FINISHED")
    return analysis


def steady_examples_per_second(run_dir: Path, steps: int, examples_per_step: int) -> float:
    """Throughput between the checkpoint at steps // 2 and the last one, from the loop's own train_seconds in the two
    sidecars: the FLOP-counted first step, start-up and checkpoint writes are outside it."""
    half, end = (read_json(run_dir / "checkpoints" / f"step_{s:07d}.json", "checkpoint sidecar")["counters"]
                 ["train_seconds"] for s in (steps // 2, steps))
    return (steps - steps // 2) * examples_per_step / (end - half)


def probe_gpu_scaling(study_dir: Path, plan: dict[str, Any]) -> dict[str, Any] | None:
    """The study's own measurement of data-parallel scaling when it has no train.gpus axis (gpu_probe): the grid's
    largest-compute model and batch, gpu_probe.steps steps on 1 and on gpu_probe.processes processes, one after
    the other, in gpu_probe/ (its own tracking store). Written to gpu_probe.json with what it cost; None when off."""
    s = plan["study"]
    probe = s.get("gpu_probe") or {"enabled": False}  # a plan from before the probe existed: off
    from genscale.study.analysis import group_axes_of

    if not probe["enabled"] or "train.gpus" in s["axes"] or group_axes_of(s["axes"]):
        return None  # measured by the axis itself; several models (families): one probe would speak for one
    path = study_dir / "gpu_probe.json"
    if path.exists():
        return read_json(path, "GPU probe")
    from genscale.config import config_with

    base = max((t for t in plan["trials"] if t.get("role", "grid") == "grid"), key=lambda t: t["planned_flops"])
    steps = probe["steps"]
    folder = study_dir / "gpu_probe"
    folder.mkdir(exist_ok=True)
    env = {**os.environ, "GENSCALE_RUNS": str(folder / "runs"),
           "OMP_NUM_THREADS": str(max(1, int(s["resources"]["cpus_per_trial"])))}
    env.pop("MLFLOW_TRACKING_URI", None)
    rows, started = [], time.time()
    for g in (1, probe["processes"]):
        cfg = config_with(saved_config(base["config"], f"plan.json trial {base['id']}"),
                          {"train.steps": steps, "train.checkpoint_every": steps // 2, "train.gpus": g,
                           "train.log_every": max(1, steps // 4), "eval.on_train_end": False, "eval.every": None},
                          "gpu_probe")
        config = folder / f"gpus-{g}.yaml"
        config.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        with console.status(f"GPU probe: {steps} steps of {base['id']} on {g} process{'es' if g > 1 else ''}"):
            done = subprocess.run([sys.executable, "-m", "genscale", "train", str(config)], capture_output=True,
                                  text=True, env=env)
        (folder / f"gpus-{g}.log").write_text(done.stdout + done.stderr)
        if done.returncode:
            record = {"error": f"{g} processes: " + next((ln for ln in done.stderr.splitlines()
                                                          if ln.startswith("error:")), f"exit {done.returncode}"),
                      "log": str(folder / f"gpus-{g}.log")}
            write_json(path, record)
            return record
        run_dir = next(p.parent for p in (folder / "runs").glob("*/summary.json")
                       if read_json(p, "summary")["world_size"] == g)
        summary = read_json(run_dir / "summary.json", "summary")
        rows.append({"trial": f"probe-gpus={g}", "axes": {"train.gpus": g}, "world_size": g,
                     "examples_per_second": steady_examples_per_second(run_dir, steps, summary["examples_per_step"]),
                     "step_seconds": summary["step_seconds"], "mfu": summary["mfu"]})
    record = {"of_trial": base["id"], "steps": steps, "results": rows, "cost_seconds": time.time() - started}
    write_json(path, record)
    return record


def _steps_done(study_dir: Path, steps: dict[str, int], finished: set[str]) -> int:
    total = 0
    for trial_id, n in steps.items():
        path = study_dir / "trials" / trial_id / "progress.json"
        if trial_id in finished:
            total += n
        elif path.exists():
            total += min(n, json.loads(path.read_text())["step"])
    return total


def _report_trial(ray, ref, trial: Trial, study_dir: Path, metric: str, out) -> int:
    """Print one finished trial's line; returns 1 if it failed. A dead worker's trial is recorded as failed."""
    try:
        result = ray.get(ref)
    except Exception as e:  # the worker process itself died (segfault, OOM kill, ...)
        result = {"trial": trial.id, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
        write_json(study_dir / "trials" / trial.id / "error.json", result)
    axes = " ".join(f"{k}={v}" for k, v in trial.axes.items())
    if "error" in result:
        out.print(f"[red]✗[/] {trial.id}  {axes}: {result['error'].splitlines()[0][:200]}", highlight=False)
        return 1
    value = result["metrics"].get(metric, float("nan"))
    out.print(f"[green]✓[/] {trial.id}  {axes}: {metric}={value:.4g}  ({result['wall_seconds']:.0f} s)",
              highlight=False)
    return 0


def _run_on_ray(study_dir: Path, pending: list[Trial], workers: int, res: dict[str, float],
                ray_address: str | None, metric: str) -> None:
    demands = {t.id: trial_resources(t, res) for t in pending}
    largest = max(demands.values(), key=lambda d: (d["num_cpus"], d["num_gpus"]))
    ray = _start_ray(workers, res["cpus_per_trial"], res["gpus_per_trial"], ray_address, largest)
    env = {"GENSCALE_RUNS": str(runs_dir().absolute()), "GENSCALE_CACHE": str(cache_dir().absolute()),
           "OMP_NUM_THREADS": str(max(1, int(res["cpus_per_trial"])))}
    for name in ("MLFLOW_TRACKING_URI", VERBOSITY_ENV):
        if os.environ.get(name):
            env[name] = os.environ[name]
    remote = ray.remote(num_cpus=res["cpus_per_trial"], num_gpus=res["gpus_per_trial"], max_calls=1,
                        max_retries=0)(execute_trial)
    try:
        futures = {remote.options(**demands[t.id]).remote(str(study_dir), t.id, env): t for t in pending}
        steps = {t.id: t.config.train.steps for t in pending}
        finished: set[str] = set()
        failed = 0
        with progress(transient=False, unit="step") as bar:  # the trials' training steps (progress.json)
            task = bar.add_task(f"study: {len(pending)} trials", total=sum(steps.values()),
                                completed=_steps_done(study_dir, steps, finished))
            while futures:
                ready, _ = ray.wait(list(futures), num_returns=1, timeout=1.0)
                if ready:
                    trial = futures.pop(ready[0])
                    finished.add(trial.id)
                    failed += _report_trial(ray, ready[0], trial, study_dir, metric, bar.console)
                bar.update(task, completed=_steps_done(study_dir, steps, finished),
                           description=f"study: {len(finished)}/{len(pending)} trials done, {failed} failed")
    finally:
        ray.shutdown()


def load_results(study_dir: Path, plan: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(results of done trials, errors of failed trials), in plan order."""
    done, failed = [], []
    for t in plan["trials"]:
        folder = study_dir / "trials" / t["id"]
        if (folder / "result.json").exists():
            done.append(json.loads((folder / "result.json").read_text()))
        elif (folder / "error.json").exists():
            failed.append(json.loads((folder / "error.json").read_text()))
    return done, failed


if __name__ == "__main__":  # one rank of a data-parallel trial: python -m genscale.study.execute STUDY_DIR TRIAL_ID
    import typer

    from genscale.cli import friendly

    try:
        friendly(train_trial)(*sys.argv[1:3])
    except typer.Exit as done:
        sys.exit(done.exit_code)
