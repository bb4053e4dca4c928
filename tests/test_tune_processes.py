"""genscale tune as processes: two workers on one SQLite storage neither lose nor duplicate a trial, and a tune
killed with SIGKILL mid-trial resumes without losing or repeating a finished trial."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_gpt_train import write_corpus
from test_tune import toy

from genscale.config import load_config
from genscale.pipeline import train
from genscale.tracking import open_client
from genscale.tune.search import load_study, read_plan


def genscale(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genscale", *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def files(tmp_path: Path, **overrides) -> tuple[Path, Path]:
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(toy(write_corpus(tmp_path / "corpus"), **overrides).model_dump(mode="json")))
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}\n")
    return config, space


def test_two_workers_on_one_sqlite_storage_neither_lose_nor_duplicate_trials(tmp_path):
    config, space = files(tmp_path)
    tune_dir = tmp_path / "tune"
    result = genscale("tune", str(config), "--space", str(space), "--trials", "4", "--workers", "2",
                      "--pruner", "none", "-o", str(tune_dir))
    assert result.returncode == 0, result.stderr + result.stdout
    trials = load_study(read_plan(tune_dir)).get_trials()
    assert [t.number for t in trials] == list(range(4)) and all(t.state.name == "COMPLETE" for t in trials)
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}  # both processes trained trials
    folders = sorted(p.name for p in (tune_dir / "trials").iterdir())
    assert folders == [f"{n:04d}" for n in range(4)]  # one run folder per trial, none left over
    run_ids = [t.user_attrs["run_id"] for t in trials]
    assert len(set(run_ids)) == 4
    client = open_client()
    for t in trials:  # each trial's run trained the values it was given and scored the value it reported
        folder = Path(t.user_attrs["run_dir"])
        assert load_config(folder / "config.yaml").train.lr == pytest.approx(t.params["train.lr"], rel=1e-12)
        assert json.loads((folder / "curve.json").read_text())["points"][-1][1] == t.value
        assert client.get_run(t.user_attrs["run_id"]).info.status == "FINISHED"
    lrs = [t.params["train.lr"] for t in trials]
    assert len(set(lrs)) == 4  # the two workers did not draw the same values
    for k in (0, 1):
        assert (tune_dir / f"worker-{k}.log").exists()
    assert sum("] trial " in line and ": val_loss" in line for line in result.stderr.splitlines()) == 4  # progress


def test_a_killed_tune_resumes_without_losing_or_repeating_a_finished_trial(tmp_path):
    config, space = files(tmp_path)
    tune_dir = tmp_path / "tune"
    args = ["--set", "train.steps=150", "--set", "train.checkpoint_every=25", "--set", "eval.every=25"]
    proc = subprocess.Popen([sys.executable, "-m", "genscale", "tune", str(config), "--space", str(space),
                             "--trials", "3", "--pruner", "none", "-o", str(tune_dir), *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while not list((tune_dir / "trials" / "0001" / "checkpoints").glob("*.safetensors")):
        assert proc.poll() is None and time.time() < deadline, "the tune ended before trial 1 wrote a checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    plan = read_plan(tune_dir)
    before = load_study(plan).get_trials()
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    finished = {k: getattr(before[0], k) for k in ("value", "params", "datetime_complete", "user_attrs")}
    run_of_1 = json.loads((tune_dir / "trials" / "0001" / "tracking.json").read_text())["run_id"]

    result = genscale("tune", "--resume", str(tune_dir))
    assert result.returncode == 0, result.stderr + result.stdout
    after = load_study(plan).get_trials()
    assert [t.state.name for t in after] == ["COMPLETE"] * 3 and [t.number for t in after] == [0, 1, 2]
    assert {k: getattr(after[0], k) for k in finished} == finished  # trial 0 was not trained again
    assert "continuing trial 1" in result.stdout + result.stderr
    # trial 1 went on in its own run (same MLflow run) from its checkpoint, to what an uninterrupted run reaches
    assert after[1].user_attrs["run_id"] == run_of_1 and after[1].params == before[1].params
    assert open_client().get_run(run_of_1).info.status == "FINISHED"
    uninterrupted = train(load_config(tune_dir / "trials" / "0001" / "config.yaml"))
    assert json.loads((uninterrupted / "curve.json").read_text())["points"][-1][1] == pytest.approx(after[1].value,
                                                                                                  rel=1e-6)
    assert after[2].params != after[1].params and after[2].params != after[0].params
    assert sorted(p.name for p in (tune_dir / "trials").iterdir()) == ["0000", "0001", "0002"]
    assert genscale("tune", "--resume", str(tune_dir)).returncode == 0  # nothing left: no fourth trial
    assert len(load_study(plan).get_trials()) == 3
