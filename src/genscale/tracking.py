"""The run store: MLflow (SQLite at <runs>/mlflow.db by default) plus one local folder per run.

A run's folder `<runs>/<mlflow run id>/` holds its checkpoints, resolved config, samples and metrics;
MLflow holds params, per-step metrics, tags and copies of the artifacts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from genscale.errors import GenscaleError
from genscale.paths import runs_dir
from genscale.ui import library_log_level

FOLDER_TAG = "genscale.folder"  # the run folder a run records, so `genscale runs --json` can name it


def tracking_uri(configured: str | None = None, *, make_folder: bool = True) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then sqlite:///<runs>/mlflow.db (its folder made, unless `make_folder` is
    false: a reader must not leave a folder behind)."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = runs_dir()
    if make_folder:
        root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def _quiet_mlflow() -> None:
    import mlflow  # noqa: F401  (its import configures its loggers; quieten them afterwards)

    logging.getLogger("mlflow").setLevel(library_log_level())
    for name in ("alembic", "sqlalchemy"):  # the store's schema chatter, even when verbose
        logging.getLogger(name).setLevel(logging.WARNING)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of a SQLite store across processes: MLflow creates and migrates its schema on first
    use, and two processes doing that at once fail ("duplicate column name", alembic errors). Servers need none."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock"):
        yield


def open_client(uri: str | None = None):
    """An MlflowClient on the store (made and migrated under a lock when it is SQLite)."""
    _quiet_mlflow()  # imports mlflow late: it takes ~2 s
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(uri)
    with _store_lock(uri):
        try:
            return MlflowClient(uri)  # fetches the store: creates and migrates the schema
        except MlflowException as e:
            raise GenscaleError(f"tracking store {uri}: {str(e).splitlines()[0]}") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def context_tags(tags: dict[str, str]) -> dict[str, str]:
    """`tags` over the tags `mlflow.start_run` adds (MlflowClient.create_run adds none): mlflow.user,
    mlflow.source.name/type from MLflow's own context providers, and mlflow.source.git.commit/branch/repoURL of the
    git checkout genscale runs in (the working directory: MLflow's own git provider looks at sys.argv[0], which is
    the installed `genscale` script, not the user's project)."""
    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL

    here = os.getcwd()
    git = {}
    if (commit := get_git_commit(here)) is not None:
        git = {MLFLOW_GIT_COMMIT: commit, MLFLOW_GIT_BRANCH: get_git_branch(here), MLFLOW_GIT_REPO_URL:
               get_git_repo_url(here)}
    return resolve_tags({**{k: v for k, v in git.items() if v is not None}, **tags}, ignore=[GitRunContext])


class Tracker:
    """One MLflow run, used through MlflowClient (no global active-run state)."""

    def __init__(self, uri: str | None, experiment: str, run_id: str | None = None, run_name: str = "run",
                 tags: dict[str, str] | None = None, *, reopen: bool = True):
        """A new run in `experiment` (created if missing), or the existing `run_id`; `reopen` marks an existing
        run RUNNING again (a resumed run), otherwise its status is left as it is (an evaluation)."""
        self.uri = tracking_uri(uri)
        self.client = open_client(self.uri)
        if run_id is None:
            with _store_lock(self.uri):  # get-or-create: two new runs must not both create the experiment
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    artifacts = (runs_dir() / "mlartifacts").as_uri() if self.uri.startswith("sqlite:") else None
                    exp_id = self.client.create_experiment(experiment, artifact_location=artifacts)
                else:
                    exp_id = exp.experiment_id
            run_id = self.client.create_run(exp_id, run_name=run_name, tags=context_tags(tags or {})).info.run_id
        elif reopen:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    @classmethod
    def existing(cls, run_id: str, *, reopen: bool) -> Tracker | None:
        """The run `run_id` in the user's store ($MLFLOW_TRACKING_URI, else <runs>/mlflow.db), or None if that
        store does not hold it (a run folder copied from elsewhere).

        A run folder's own config never chooses the store: a copied folder must not make genscale write to, or
        call, a tracking URI written inside it."""
        from mlflow.exceptions import MlflowException

        try:
            open_client(None).get_run(run_id)
        except MlflowException:
            return None
        return cls(None, "", run_id=run_id, reopen=reopen)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in flatten(params).items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class NullTracker:
    """Stands in for a Tracker when the store does not hold the run (a copied run folder): records nothing."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


def run_lock(run_dir: Path):
    """Hold the run folder for this process (released at exit, also by a kill): a second `train --resume` of a
    run that is still training would write the same checkpoints."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(run_dir / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise GenscaleError(f"{run_dir}: another process is training this run") from None
    return lock


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=-]*")  # MLflow run ids are hex; study trial folders add - . =


def resolve_run_dir(run: str) -> Path:
    """A run folder path, a run id, a unique prefix of one, or 'latest' (the newest run folder).

    Anything with a path separator, or an existing folder, is a path and must be a run folder (hold config.yaml);
    otherwise it is 'latest' or an id prefix, matched literally against the folder names in <runs> (no globbing)."""
    path = Path(run).expanduser()
    if (path / "config.yaml").is_file():
        return path.absolute()
    if os.sep in run or "/" in run or run in (".", "..") or run.startswith("~") or path.is_dir():
        raise GenscaleError(f"{run}: not a run folder (no config.yaml)")
    root = runs_dir()
    folders = [p for p in root.iterdir() if (p / "config.yaml").is_file()] if root.is_dir() else []
    if run == "latest":
        if not folders:
            raise GenscaleError(f"run 'latest': no runs in {root}")
        return max(folders, key=lambda p: (p / "config.yaml").stat().st_mtime)
    if not _RUN_ID.fullmatch(run):
        raise GenscaleError(f"run '{run}': not a run id, prefix or folder")
    matches = sorted(p for p in folders if p.name.startswith(run))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise GenscaleError(f"run '{run}': no such run in {root}")
    raise GenscaleError(f"run '{run}': ambiguous, matches {', '.join(p.name for p in matches[:5])}")


def list_runs(uri: str | None = None, experiment: str = "genscale", *, filter_string: str = "",
              limit: int = 1000) -> list[dict[str, Any]]:
    """Rows for `genscale runs`, newest first: at most `limit` runs of `experiment` that match `filter_string`, an
    MLflow search filter (`tags.gate = 'PASS' and metrics.fid_fmnist < 50`, `params."train.steps" = '100'`).

    A SQLite store that does not exist yet holds no runs: said without importing MLflow (~2 s) or creating it."""
    uri = tracking_uri(uri, make_folder=False)
    db = _sqlite_path(uri)
    if db is not None and not db.exists():
        return []
    from mlflow.exceptions import MlflowException

    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    try:
        found = client.search_runs([exp.experiment_id], filter_string=filter_string,
                                   order_by=["attributes.start_time DESC"], max_results=limit)
    except MlflowException as e:
        raise GenscaleError(f"--filter {filter_string!r}: {str(e).splitlines()[0]}") from None
    return [run_row(r) for r in found]


def run_row(r: Any) -> dict[str, Any]:
    """One MLflow run as plain JSON-able values: its folder is the one it recorded (tag genscale.folder), else
    <runs>/<id> when that holds a run, else None (a run folder elsewhere, or gone)."""
    folder = r.data.tags.get(FOLDER_TAG)
    if folder is None and (runs_dir() / r.info.run_id / "config.yaml").is_file():
        folder = str(runs_dir() / r.info.run_id)
    started = r.info.start_time
    return {"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status, "folder": folder,
            "family": r.data.tags.get("family"), "arch": r.data.tags.get("arch"),
            "start_time": datetime.fromtimestamp(started / 1000, timezone.utc).isoformat(timespec="seconds")
            if started else None,
            "params": r.data.params, "metrics": r.data.metrics, "tags": r.data.tags}
