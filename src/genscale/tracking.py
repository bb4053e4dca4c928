"""The run store: MLflow (SQLite at <runs>/mlflow.db by default) plus one local folder per run.

A run's folder `<runs>/<mlflow run id>/` holds its checkpoints, resolved config, samples and metrics;
MLflow holds params, per-step metrics, tags and copies of the artifacts.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from genscale.errors import GenscaleError
from genscale.paths import runs_dir


def tracking_uri(configured: str | None = None) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then sqlite:///<runs>/mlflow.db."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def _quiet_mlflow() -> None:
    import mlflow  # noqa: F401  (its import configures its loggers; quieten them afterwards)

    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


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


class Tracker:
    """One MLflow run, used through MlflowClient (no global active-run state)."""

    def __init__(self, uri: str | None, experiment: str, run_id: str | None = None, run_name: str = "run",
                 tags: dict[str, str] | None = None):
        _quiet_mlflow()  # imports mlflow late: it takes ~2 s
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(uri)
        self.client = MlflowClient(self.uri)
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                artifacts = (runs_dir() / "mlartifacts").as_uri() if self.uri.startswith("sqlite:") else None
                exp_id = self.client.create_experiment(experiment, artifact_location=artifacts)
            else:
                exp_id = exp.experiment_id
            run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags or {}).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

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


def resolve_run_dir(run: str) -> Path:
    """A run folder path, a run id, a unique prefix of one, or 'latest' (the newest run folder)."""
    path = Path(run)
    if (path / "config.yaml").exists():
        return path.absolute()
    root = runs_dir()
    if run == "latest":
        folders = [p for p in root.glob("*") if (p / "config.yaml").exists()] if root.exists() else []
        if not folders:
            raise GenscaleError(f"run 'latest': no runs in {root}")
        return max(folders, key=lambda p: (p / "config.yaml").stat().st_mtime)
    matches = [p for p in root.glob(f"{run}*") if (p / "config.yaml").exists()] if root.exists() else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise GenscaleError(f"run '{run}': no such run in {root}")
    raise GenscaleError(f"run '{run}': ambiguous, matches {', '.join(p.name for p in matches[:5])}")


def list_runs(uri: str | None = None, experiment: str = "genscale") -> list[dict[str, Any]]:
    """Rows for `genscale runs`, newest first."""
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    rows = []
    for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000):
        rows.append({"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
                     "params": r.data.params, "metrics": r.data.metrics, "tags": r.data.tags})
    return rows
