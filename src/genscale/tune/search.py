"""`genscale tune`: an Optuna study over config keys, each trial an ordinary tracked run, pruned on its metric curve.

A tuning folder `<runs>/tunes/<name>-<time>/` holds tune.json (the plan: base config, space, sampler, pruner,
storage, trial count), trials/<number>/ (each trial's run folder), one log per worker process, and at the end the
report (report.md, best.yaml, plots). Trials live in an Optuna RDB storage: SQLite at <runs>/optuna.db by default,
so `optuna-dashboard sqlite:///runs/optuna.db` shows them too.

The objective is the last point of the run's eval.every metric curve (a lower-is-better metric on validation data:
FID on the validation split, or val_loss), never the test split the gate judges; the pruner sees every point.
Trial 0 is the config as given (when the space holds its values), so the best is never worse than the default on
the objective.

A kill loses no finished trial: a trial is told to the storage only when its run has finished, and a trial still
RUNNING when `genscale tune --resume DIR` starts (no process holds the folder any more) continues in its own run
folder from its last checkpoint, with the values it was given.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from genscale.config import RunConfig, config_with, saved_config
from genscale.errors import GenscaleError
from genscale.paths import read_json, runs_dir, write_json
from genscale.tune.space import Param, contains, dump_space, format_params, read_space, suggest, value_of
from genscale.ui import console, library_log_level

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
TUNE_TAG = "genscale.tune"


def default_storage() -> str:
    root = runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'optuna.db'}"


def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(library_log_level())  # genscale says what each trial did, in one line
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(url: str):
    """An Optuna RDB storage; SQLite waits up to a minute for a lock held by another worker."""
    optuna = _quiet_optuna()
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # noqa: BLE001  sqlalchemy's own errors (bad URL, no driver, no server)
        raise GenscaleError(f"--storage {url}: {str(e).splitlines()[0]}") from None


def read_plan(tune_dir: Path) -> dict[str, Any]:
    path = Path(tune_dir) / "tune.json"
    if not path.is_file():
        raise GenscaleError(f"{tune_dir}: not a tuning folder (no tune.json)")
    return read_json(path, "tuning plan")


def update_plan(tune_dir: Path, **changes: Any) -> dict[str, Any]:
    """Set keys of a tuning folder's plan (tune.json), e.g. more trials for another round; returns the plan."""
    plan = {**read_plan(tune_dir), **changes}
    write_json(Path(tune_dir) / "tune.json", plan)
    return plan


def with_curve(cfg: RunConfig) -> RunConfig:
    """The config with a metric curve to prune on: eval.every as given, else a fifth of the steps."""
    if cfg.eval.every is not None:
        return cfg
    every = max(1, cfg.train.steps // 5)
    console.print(f"note: eval.every is off in the config; trials score their metric curve every {every} steps "
                  "(a fifth of train.steps) for the pruner and the objective", highlight=False)
    return config_with(cfg, {"eval.every": every}, "eval.every")


def make_sampler(plan: dict[str, Any], space: dict[str, Param], worker: int, existing: int):
    """The plan's sampler for one worker process. Its seed differs by worker and by the trials the study already
    holds, so a resumed (or second) process does not draw the same random values again."""
    from genscale.tune.space import CategoricalParam, FloatParam

    optuna = _quiet_optuna()
    seed, startup = plan["seed"] + 1000 * worker + existing, plan["startup_trials"]
    if plan["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if plan["sampler"] == "grid":
        import numpy as np

        grid = {}
        for key, p in space.items():
            if isinstance(p, CategoricalParam):
                grid[key] = p.choices
            elif isinstance(p, FloatParam) and p.step is None:
                raise GenscaleError(f"--sampler grid: key '{key}' is a continuous float; give it a step or choices")
            else:
                grid[key] = [v.item() for v in np.arange(p.low, p.high + p.step / 2, p.step)]
        return optuna.samplers.GridSampler(grid, seed=plan["seed"])
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=plan["workers"] > 1)


def make_pruner(plan: dict[str, Any]):
    optuna = _quiet_optuna()
    cfg = saved_config(plan["config"], "tune.json config")
    if plan["pruner"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=plan["startup_trials"], n_warmup_steps=0)
    if plan["pruner"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.eval.every, max_resource=cfg.train.steps,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def load_study(plan: dict[str, Any], worker: int = 0):
    optuna = _quiet_optuna()
    space = read_space(plan["space"], "tune.json space")
    study = optuna.load_study(study_name=plan["study_name"], storage=open_storage(plan["storage"]),
                              pruner=make_pruner(plan))
    study.sampler = make_sampler(plan, space, worker, len(study.get_trials(deepcopy=False)))
    return study


def create_tune(cfg: RunConfig, space: dict[str, Param], *, trials: int, sampler: str = "tpe",
                pruner: str = "median", storage: str | None = None, seed: int = 0, startup_trials: int = 5,
                workers: int = 1, budget_flops: float | None = None, trial_flops: float | None = None,
                first_trial: bool = True, out: Path | None = None, origin: str = "tune") -> Path:
    """Make the tuning folder, its Optuna study and the tuning run in MLflow (each trial becomes its child).

    `budget_flops`: no trial starts once the training FLOPs spent plus one trial's (`trial_flops`, else the
    largest a finished trial spent) would pass it. `first_trial`: trial 0 is the config as given (when the space
    holds its values)."""
    if sampler not in SAMPLERS or pruner not in PRUNERS:
        raise GenscaleError(f"--sampler {sampler} / --pruner {pruner}: choose a sampler of {', '.join(SAMPLERS)} "
                            f"and a pruner of {', '.join(PRUNERS)}")
    if trials < 1 or workers < 1 or startup_trials < 0:
        raise GenscaleError(f"--trials {trials} / --workers {workers} / --startup-trials {startup_trials}: trials "
                            "and workers >= 1, startup trials >= 0")
    if cfg.train.gpus > 1:
        raise GenscaleError(f"tune: trials train on one process each (the config has train.gpus {cfg.train.gpus}); "
                            "run trials side by side with --workers")
    cfg = with_curve(cfg)
    optuna = _quiet_optuna()
    storage = storage or default_storage()
    name = f"{cfg.name}-tune-{time.strftime('%Y%m%d-%H%M%S')}"
    tune_dir = (out or runs_dir() / "tunes" / name).absolute()
    if tune_dir.exists() and any(tune_dir.iterdir()):
        raise GenscaleError(f"{tune_dir}: folder exists and is not empty; continue it with `genscale tune --resume "
                            f"{tune_dir}`")
    study = optuna.create_study(study_name=name, storage=open_storage(storage), direction="minimize")
    first = {k: value_of(cfg, k) for k in space}
    if first_trial and all(contains(space[k], v) for k, v in first.items()):  # trial 0: the config as given
        study.enqueue_trial(first)

    from genscale.tracking import Tracker

    parent = Tracker(cfg.tracking.uri, cfg.tracking.experiment, run_name=name,
                     tags={TUNE_TAG: name, "family": cfg.model.family, "arch": cfg.model.arch})
    (tune_dir / "trials").mkdir(parents=True, exist_ok=True)
    plan = {"name": name, "study_name": name, "storage": storage, "config": cfg.model_dump(mode="json"),
            "space": dump_space(space), "trials": trials, "sampler": sampler, "pruner": pruner, "seed": seed,
            "startup_trials": startup_trials, "workers": workers, "budget_flops": budget_flops,
            "trial_flops": trial_flops, "parent_run_id": parent.run_id, "host": socket.gethostname(),
            "origin": origin, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(tune_dir / "tune.json", plan)
    parent.log_params({"tune": {k: plan[k] for k in ("trials", "sampler", "pruner", "seed", "startup_trials",
                                                     "storage", "budget_flops")}, "space": plan["space"]})
    parent.set_tags({"tune.folder": str(tune_dir), "tune.storage": storage})
    parent.client.update_run(parent.run_id, status="SCHEDULED")
    return tune_dir


def trial_folder(tune_dir: Path, number: int) -> Path:
    return Path(tune_dir) / "trials" / f"{number:04d}"


def _flops(t: Any) -> float:
    return float(t.user_attrs.get("flops", 0.0))


def spent_flops(study: Any) -> float:
    """Training FLOPs the study's finished trials spent (a pruned trial until its stop)."""
    return sum(_flops(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished())


def _may_start(study: Any, plan: dict[str, Any]) -> bool:
    """Whether another trial may start: fewer than plan["trials"] have started (a queued trial 0 has not) and the
    budget allows one more: the FLOPs spent, plus one trial's (the plan's estimate, or the most a finished trial
    spent) for each running trial and the new one."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name != "WAITING"]
    if len(trials) >= plan["trials"]:
        return False
    budget = plan.get("budget_flops")
    if budget is None:
        return True
    one = max([plan.get("trial_flops") or 0.0, *(_flops(t) for t in trials if t.state.name == "COMPLETE")])
    running = sum(1 for t in trials if t.state.name == "RUNNING")
    if one == 0:  # no trial's cost known yet: one runs alone to tell it
        return running == 0 and spent_flops(study) < budget
    return spent_flops(study) + (running + 1) * one <= budget


def _tell(study: Any, trial: Any, value: float | None = None, state: Any = None) -> Any:
    """study.tell; Optuna's grid sampler asks the study to stop once its grid is done, which only an optimize loop
    can (a RuntimeError here, raised after the trial's state is stored): this loop stops by its own count."""
    try:
        return study.tell(trial, value, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
        return study._storage.get_trial(trial._trial_id)


def run_trial(tune_dir: Path, plan: dict[str, Any], study: Any, trial: Any, worker: int) -> Any:
    """Train one trial (or continue it in its folder) and tell the storage how it ended; returns its FrozenTrial."""
    from optuna.trial import TrialState

    from genscale.pipeline import tracked_run_id, train
    from genscale.train.loop import NonFiniteLossError, Pruned

    space = read_space(plan["space"], "tune.json space")
    base = saved_config(plan["config"], "tune.json config")
    values = suggest(trial, space)
    folder = trial_folder(tune_dir, trial.number)
    trial.set_user_attr("run_dir", str(folder))
    trial.set_user_attr("tune_dir", str(tune_dir))
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("worker", worker)
    pruning = plan["pruner"] != "none"

    def observe(step: int, value: float) -> bool:
        with warnings.catch_warnings():  # a resumed trial reports its kept points again: optuna keeps the first
            warnings.simplefilter("ignore")
            trial.report(value, step)
        return pruning and trial.should_prune()

    try:
        if (folder / "config.yaml").is_file():
            train(resume=str(folder), observe=observe)
        else:
            cfg = config_with(base, values, f"trial {trial.number}")
            train(cfg, run_dir=folder, observe=observe,
                  tags={"mlflow.parentRunId": plan["parent_run_id"], TUNE_TAG: plan["name"],
                        "genscale.trial": str(trial.number)})
    except Pruned as p:
        trial.set_user_attr("flops", float(p.flops))
        trial.set_user_attr("stopped_at", p.step)
        trial.set_user_attr("run_id", tracked_run_id(folder))
        return _tell(study, trial, state=TrialState.PRUNED)
    except (NonFiniteLossError, MemoryError) as e:  # this configuration cannot train: the search goes on
        trial.set_user_attr("error", str(e) or type(e).__name__)
        trial.set_user_attr("flops", float(plan.get("trial_flops") or 0.0))
        return _tell(study, trial, state=TrialState.FAIL)
    except (KeyboardInterrupt, SystemExit):
        raise  # the trial stays RUNNING; --resume continues it
    except BaseException as e:
        trial.set_user_attr("error", f"{type(e).__name__}: {e}")
        _tell(study, trial, state=TrialState.FAIL)
        raise
    summary = read_json(folder / "summary.json", "run summary")
    curve = read_json(folder / "curve.json", "metric curve")
    gate = read_json(folder / "gate.json", "gate verdict") if (folder / "gate.json").exists() else None
    trial.set_user_attr("flops", float(summary["flops"]))
    trial.set_user_attr("metric", curve["metric"])
    trial.set_user_attr("budget", curve["budget"])
    trial.set_user_attr("run_id", tracked_run_id(folder))
    if gate:
        trial.set_user_attr("gate", gate["verdict"])
    return _tell(study, trial, curve["points"][-1][1])


def describe(t: Any) -> str:
    params = format_params(t.params)
    if t.state.name == "COMPLETE":
        how = f"{t.user_attrs.get('metric', 'value')} {t.value:.4g}" + (f", gate {t.user_attrs['gate']}"
                                                                       if "gate" in t.user_attrs else "")
    elif t.state.name == "PRUNED":
        how = f"pruned at step {t.user_attrs.get('stopped_at', '?')}"
    else:
        how = f"failed: {t.user_attrs.get('error', '?')}"
    return f"trial {t.number}: {how} ({params})"


def progress_line(study: Any, plan: dict[str, Any], t: Any) -> str:
    trials = study.get_trials(deepcopy=False)
    done = sum(1 for x in trials if x.state.is_finished())
    complete = [x for x in trials if x.state.name == "COMPLETE"]
    best = min(complete, key=lambda x: x.value) if complete else None
    return f"[{done}/{plan['trials']}] {describe(t)}" + (f"; best so far trial {best.number} ({best.value:.4g})"
                                                           if best else "")


def orphans(study: Any, tune_dir: Path) -> list[int]:
    """Trials of this folder still RUNNING while no process holds it: a killed tune's, continued by resume."""
    return [t.number for t in study.get_trials(deepcopy=False)
            if t.state.name == "RUNNING" and t.user_attrs.get("tune_dir") == str(tune_dir)]


def work(tune_dir: Path, worker: int, adopt: list[int]) -> None:
    """One worker: continue the adopted trials, then ask and train new ones until the plan's count or budget."""
    import optuna
    from filelock import FileLock

    tune_dir = Path(tune_dir)
    plan = read_plan(tune_dir)
    study = load_study(plan, worker)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number in adopt:
        trial = optuna.trial.Trial(study, by_number[number]._trial_id)
        console.print(f"continuing trial {number} in {trial_folder(tune_dir, number)}", highlight=False)
        console.print(progress_line(study, plan, run_trial(tune_dir, plan, study, trial, worker)), highlight=False)
    while True:
        with FileLock(str(tune_dir / "ask.lock")):  # counting and asking as one step: no trial too many
            if not _may_start(study, plan):
                return
            trial = study.ask()
            trial.set_user_attr("tune_dir", str(tune_dir))  # before the lock goes: an orphan if killed from here
        console.print(progress_line(study, plan, run_trial(tune_dir, plan, study, trial, worker)), highlight=False)


def _die_with_parent() -> None:
    """A worker process is killed with the tuning process (Linux), so a killed tune leaves no worker training."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_tune(tune_dir: Path, *, workers: int | None = None) -> dict[str, Any]:
    """Run (or continue) a tuning folder's trials on `workers` processes, then write its report; returns the
    report's summary. Holds the folder for its lifetime: a second `tune --resume` of it is refused."""
    from filelock import FileLock, Timeout

    from genscale.tracking import Tracker
    from genscale.tune.report import write_report

    tune_dir = Path(tune_dir).absolute()
    plan = read_plan(tune_dir)
    lock = FileLock(str(tune_dir / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise GenscaleError(f"{tune_dir}: another process is running this tuning") from None
    try:
        workers = workers or plan["workers"]
        if workers != plan["workers"]:
            plan = update_plan(tune_dir, workers=workers)
        study = load_study(plan)
        adopt = orphans(study, tune_dir)
        parent = Tracker.existing(plan["parent_run_id"], reopen=True)
        console.print(f"tune {plan['name']}: {plan['trials']} trials ({plan['sampler']}, pruner {plan['pruner']}) on "
                      f"{workers} {'worker' if workers == 1 else 'workers'}; storage {plan['storage']}  ({tune_dir})"
                      + (f"; continuing {len(adopt)} interrupted" if adopt else ""), highlight=False)
        try:
            if workers == 1:
                work(tune_dir, 0, adopt)
            else:
                _run_workers(tune_dir, plan, workers, adopt, study)
        except BaseException:
            if parent:
                parent.finish("KILLED")
            raise
        summary = write_report(tune_dir)
        if parent:
            parent.log_metrics({"best_value": summary["best"]["value"]} if summary["best"] else {},
                               len(summary["trials"]))
            if summary["best"]:
                parent.set_tags({"best.trial": summary["best"]["number"], "best.run_id":
                                 summary["best"].get("run_id", "")})
                parent.log_params({"best": summary["best"]["params"]})
            for name in ("report.md", "best.yaml", "history.png", "parallel.png", "importance.png", "summary.json"):
                if (tune_dir / name).exists():
                    parent.log_artifact(tune_dir / name)
            parent.finish()
        return summary
    finally:
        lock.release()


def _run_workers(tune_dir: Path, plan: dict[str, Any], workers: int, adopt: list[int], study: Any) -> None:
    """`workers` processes on the storage, torch's threads shared among them; a line each time a trial ends."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = []
    for k in range(workers):
        log = open(tune_dir / f"worker-{k}.log", "ab")  # noqa: SIM115  (the process holds it)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "genscale.tune.search", str(tune_dir), str(k),
             ",".join(str(n) for n in adopt[k::workers])], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent))
        log.close()
    said = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    try:
        while True:
            running = [p.poll() is None for p in procs]
            for t in study.get_trials(deepcopy=False):
                if t.state.is_finished() and t.number not in said:
                    said.add(t.number)
                    console.print(progress_line(study, plan, t), highlight=False)
            if not any(running):
                break
            time.sleep(1.0)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    failed = [(k, p.returncode) for k, p in enumerate(procs) if p.returncode]
    if failed:
        k, code = failed[0]
        log = tune_dir / f"worker-{k}.log"
        last = next((line for line in reversed(log.read_text(errors="replace").splitlines())
                     if line.startswith("error:")), f"exit status {code}")
        raise GenscaleError(f"tune worker {k} stopped: {last.removeprefix('error: ')} (log: {log})")


def _worker_main(argv: list[str]) -> int:
    from genscale.cli import error_line

    tune_dir, worker, adopt = Path(argv[0]), int(argv[1]), [int(n) for n in argv[2].split(",") if n]
    try:
        work(tune_dir, worker, adopt)
    except Exception as e:
        line = error_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
