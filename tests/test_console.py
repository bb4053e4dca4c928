"""What genscale says without a terminal (progress lines), how -q/-v change it, and the context tags of its runs."""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from conftest import tiny_config
from genscale import ui
from genscale.cli import app
from genscale.tracking import Tracker, tracking_uri

LINE = re.compile(r"^train gan-mlp  step (\d+)/12  loss_d=(\S+) loss_g=(\S+)  (\S+) steps/s(?:  ETA (\d+m)?(\d+)s)?$")


@pytest.fixture
def verbosity(monkeypatch):
    monkeypatch.delenv(ui.VERBOSITY_ENV, raising=False)  # restored after the test, as is the console
    yield
    ui.set_verbosity(ui.NORMAL)


def test_training_without_a_terminal_writes_a_line_every_log_every_steps(tmp_path):
    """stderr is a pipe: one line at each of steps 3, 6, 9, 12 whose losses are the ones MLflow logged there."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(eval__on_train_end=False).model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != ui.VERBOSITY_ENV}
    done = subprocess.run([sys.executable, "-m", "genscale.cli", "train", str(config)], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 0, done.stderr
    matches = [m for m in map(LINE.match, done.stderr.splitlines()) if m]
    assert [int(m[1]) for m in matches] == [3, 6, 9, 12], done.stderr
    assert all(float(m[4]) > 0 for m in matches)
    assert [m[6] is not None for m in matches] == [True, True, True, False]  # an ETA until the last step
    client = MlflowClient(tracking_uri())
    run = client.search_runs([client.get_experiment_by_name("genscale").experiment_id])[0]
    for name, group in (("loss_d", 2), ("loss_g", 3)):
        logged = {h.step: h.value for h in client.get_metric_history(run.info.run_id, name)}
        assert [float(m[group]) for m in matches] == [float(f"{logged[s]:.4g}") for s in (3, 6, 9, 12)]


def test_quiet_hides_progress_and_notes_but_not_results(tmp_path, verbosity):
    path = str(tmp_path / "run.yaml")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(tiny_config(train__steps=6, eval__on_train_end=False)
                                                      .model_dump(mode="json")))
    result = CliRunner().invoke(app, ["-q", "train", path], catch_exceptions=False)
    assert result.exit_code == 0
    assert result.stderr == "", result.stderr  # no `run ...` note, no progress line
    assert result.stdout.startswith("run folder: ")
    assert os.environ[ui.VERBOSITY_ENV] == "quiet"  # what the processes it starts would inherit


def test_verbose_and_quiet_exclude_each_other(verbosity):
    result = CliRunner().invoke(app, ["-q", "-v", "runs"])
    assert result.exit_code == 2 and "--quiet" in result.output


def test_a_tracked_run_has_mlflow_context_tags(tmp_path, monkeypatch):
    """As mlflow.start_run would set them: the user, the source, and the commit of the git checkout it runs in."""
    repo = tmp_path / "project"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "first"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    inside = Tracker(None, "genscale", run_name="inside", tags={"family": "gan", "mlflow.source.name": "mine"})
    monkeypatch.chdir(tmp_path)
    outside = Tracker(None, "genscale", run_name="outside")
    tags = inside.client.get_run(inside.run_id).data.tags
    assert tags["mlflow.user"] == getpass.getuser() and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == head
    assert tags["family"] == "gan" and tags["mlflow.source.name"] == "mine"  # genscale's own tags win
    assert "mlflow.source.git.commit" not in outside.client.get_run(outside.run_id).data.tags
