"""A study killed mid-trial resumes to the results of an uninterrupted one, bit for bit, with its failed trials
recorded (real Ray workers, real `genscale` processes). Its own file so that the test runner can run it beside the
rest of tests/test_study.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from test_study import GENSCALE, TINY_RUN, write_study

from genscale.paths import runs_dir
from genscale.study.execute import read_plan


def _results(study_dir: Path) -> dict[str, object]:
    out = {}
    for folder in sorted((study_dir / "trials").iterdir()):
        if (folder / "result.json").exists():
            out[folder.name] = json.loads((folder / "result.json").read_text())["metrics"]
        else:
            out[folder.name] = json.loads((folder / "error.json").read_text())["error"]
    return out


def test_killed_study_resumes_to_the_uninterrupted_results_and_records_failed_trials(tmp_path):
    run = {**TINY_RUN, "train": {**TINY_RUN["train"], "steps": 300, "checkpoint_every": 50, "log_every": 25}}
    study = write_study(tmp_path, run=run, axes={"data.size": [64, 128], "train.lr_d": [2e-4, 1e30]})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    whole = subprocess.run([*GENSCALE, "study", "run", str(study), "--workers", "2", "--out", str(tmp_path / "a")],
                           capture_output=True, text=True, env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]

    killed = tmp_path / "b"
    proc = subprocess.Popen([*GENSCALE, "study", "run", str(study), "--workers", "2", "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 240
    while not list(killed.glob("trials/*/result.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(killed.glob("trials/*/result.json"))) < 2, "the study finished before it could be killed"
    in_flight = {p.parent.name: json.loads(p.read_text())["run_id"] for p in killed.glob("trials/*/tracking.json")
                 if not (p.parent / "result.json").exists() and not (p.parent / "error.json").exists()}

    resumed = subprocess.run([*GENSCALE, "study", "resume", str(killed), "--workers", "2"],
                             capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _results(tmp_path / "a"), _results(killed)
    for trial, run_id in in_flight.items():  # continued as the same run, from its checkpoints
        result = killed / "trials" / trial / "result.json"
        assert not result.exists() or json.loads(result.read_text())["run_id"] == run_id
    assert a == b  # same metrics to the last bit, same failures
    failed = sorted(k for k, v in a.items() if isinstance(v, str))
    assert [k.split("-", 1)[1] for k in failed] == ["size=64-lr_d=1e+30", "size=128-lr_d=1e+30"]
    assert all("diverged" in a[k] for k in failed)
    assert "2 trial(s) failed" in resumed.stdout and "verdict:" in resumed.stdout
    analysis = json.loads((killed / "analysis.json").read_text())
    assert analysis["summary_metrics"]["trials_failed"] == 2 and analysis["summary_metrics"]["trials_done"] == 2

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs_dir() / 'mlflow.db'}")
    parent = read_plan(killed)["parent_run_id"]
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.tags["genscale.trial"] for r in children) == sorted(b)
    done = [r for r in children if r.info.status == "FINISHED"]
    assert {r.data.tags["genscale.trial"] for r in done} == {k for k, v in b.items() if not isinstance(v, str)}
    assert all({"data_size", "flops", "epochs", "train_seconds", "fid_fmnist"} <= set(r.data.metrics) for r in done)
