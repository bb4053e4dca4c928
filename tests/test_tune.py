"""genscale tune and train --until-pass, in process: the search finds a known learning-rate window, the pruner stops a
diverging trial at its first point, the space file is checked before anything trains, the until-pass loop's exit
statuses. Worker processes and a killed tune: test_tune_processes.py."""

import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from test_gpt_train import write_corpus
from typer.testing import CliRunner

from conftest import gpt_config
from genscale.cli import app
from genscale.config import load_config
from genscale.errors import GenscaleError
from genscale.pipeline import train
from genscale.tracking import open_client
from genscale.train.checkpoint import latest_step
from genscale.tune.search import create_tune, load_study, read_plan, run_tune
from genscale.tune.space import load_space, read_space

runner = CliRunner()


def toy(corpus: Path, **overrides):
    """The toy problem: a 2-layer GPT, 40 steps on a small grammar; its val_loss after 40 steps has one learning-rate
    window (about 1e-2) that the grid scan below locates."""
    return gpt_config(corpus, train__steps=40, eval__every=10, eval__every_val_tokens=500, eval__on_train_end=False,
                      **overrides)


def final_value(run_dir: Path) -> float:
    return json.loads((run_dir / "curve.json").read_text())["points"][-1][1]


def write(path: Path, obj) -> Path:
    path.write_text(yaml.safe_dump(obj))
    return path


def test_tpe_finds_the_learning_rate_window_that_a_grid_scan_finds(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    grid = [10 ** (e / 2) for e in range(-10, 1)]  # 1e-5 .. 1, half a decade apart
    scan = {lr: final_value(train(toy(corpus, train__lr=lr))) for lr in grid}
    best_lr = min(scan, key=scan.get)
    assert 1e-3 < best_lr < 1e-1 and scan[best_lr] < scan[1e-5] - 1.0  # the window is inside the range, and sharp

    base = toy(corpus, train__lr=1e-4)
    space = read_space({"train.lr": {"type": "float", "low": 1e-5, "high": 3.0, "log": True}}, "space")
    tune_dir = create_tune(base, space, trials=12, startup_trials=4, seed=0)
    summary = run_tune(tune_dir)
    best = summary["best"]
    # stated: 12 trials reach the grid scan's best value (within 3%), at a learning rate within half a decade of it
    assert best["value"] <= scan[best_lr] * 1.03
    assert abs(math.log10(best["params"]["train.lr"]) - math.log10(best_lr)) <= 0.5
    assert len(summary["trials"]) == 12 and summary["trials"][0]["params"] == {"train.lr": 1e-4}  # trial 0: as given
    # the best configuration trains again to the same value: best.yaml is a config `genscale train` takes
    again = train(load_config(best["config"]))
    assert final_value(again) == pytest.approx(best["value"], rel=1e-6)
    # every trial is a child run of the tuning run in MLflow, with the trial's own value
    client, plan = open_client(), read_plan(tune_dir)
    for row in summary["trials"]:
        run = client.get_run(row["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == plan["parent_run_id"]
        assert float(run.data.params["train.lr"]) == pytest.approx(row["params"]["train.lr"])
    assert set(summary["importance"]) == {"train.lr"}
    report = (tune_dir / "report.md").read_text()
    assert f"{best['value']:.4g}" in report and all((tune_dir / p).stat().st_size > 0
                                                      for p in ("history.png", "parallel.png"))


def test_the_median_pruner_stops_a_diverging_trial_at_its_first_point(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    base = toy(corpus, train__lr=1e-2)
    space = read_space({"train.lr": {"type": "categorical", "choices": [1e-2, 3.0]}}, "space")
    tune_dir = create_tune(base, space, trials=3, sampler="grid", startup_trials=1)
    summary = run_tune(tune_dir)
    by_lr = {}
    for row in summary["trials"]:
        by_lr.setdefault(row["params"]["train.lr"], []).append(row)
    assert [r["state"] for r in by_lr[1e-2]] == ["COMPLETE", "COMPLETE"]  # trial 0 (as given) and its grid point
    (diverging,) = by_lr[3.0]
    assert diverging["state"] == "PRUNED" and diverging["stopped_at"] == 10  # of 40 steps
    folder = Path(diverging["run_dir"])
    assert json.loads((folder / "progress.json").read_text()) == {"step": 10, "steps": 40}
    assert latest_step(folder / "checkpoints") is None  # it stopped before its first checkpoint (also step 10)
    assert [s for s, _ in json.loads((folder / "curve.json").read_text())["points"]] == [10]
    run = open_client().get_run(diverging["run_id"])
    assert run.info.status == "KILLED" and run.data.tags["pruned.step"] == "10"
    complete = by_lr[1e-2][0]
    assert diverging["flops"] == pytest.approx(complete["flops"] / 4)  # charged what it trained, a quarter
    assert summary["pruning"]["flops_saved"] == pytest.approx(complete["flops"] * 3 / 4)
    # optuna-dashboard reads the same storage: its API lists the study with the pruned trial
    storage = read_plan(tune_dir)["storage"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host",
                               "127.0.0.1", "--port", str(port), "--server", "wsgiref", "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        studies = None
        for _ in range(100):
            try:
                studies = httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=2).json()["study_summaries"]
                break
            except httpx.TransportError:
                time.sleep(0.1)
        (study,) = [s for s in studies if s["study_name"] == read_plan(tune_dir)["study_name"]]
        trials = httpx.get(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}?after=0", timeout=5).json()
        assert sorted(t["state"] for t in trials["trials"]) == ["Complete", "Complete", "Pruned"]
    finally:
        server.kill()
        server.wait()


def test_a_space_file_is_checked_against_the_config_before_anything_trains(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    base = toy(corpus)
    cases = {
        "train.lrr: {type: float, low: 1.0e-4, high: 1.0e-2}\n": "key 'train.lrr' = 0.0001: unknown key 'train.lrr'",
        "train.lr: {type: float, low: 1.0e-2, high: 1.0e-4}\n": "key 'train.lr': needs low < high",
        "train.lr: {type: floaty, low: 1, high: 2}\n": "key 'train.lr': type must be float, int or categorical",
        "train.lr: 0.01\n": "key 'train.lr': expected a mapping",
        "train.steps: {type: int, low: -5, high: 10}\n": "key 'train.steps' = -5",
        "{}\n": "the search space is empty",
    }
    for text, message in cases.items():
        path = tmp_path / "space.yaml"
        path.write_text(text)
        with pytest.raises(GenscaleError) as e:
            load_space(str(path), base)
        assert str(path) in str(e.value) and message in str(e.value), (text, str(e.value))
    assert not (Path(tmp_path) / "runs" / "tunes").exists()
    # the family's default space, without --space, is valid for its shipped configs
    assert set(load_space(None, base)) == {"train.lr", "train.weight_decay"}


def until_pass_args(tmp_path, corpus, *, gate: float, extra: list[str]) -> list[str]:
    cfg = toy(corpus, train__lr=1e-4).model_dump(mode="json")
    cfg["eval"]["on_train_end"] = True
    cfg["gate"] = {"val_loss": {"max": gate}}
    config = write(tmp_path / "toy.yaml", cfg)
    space = write(tmp_path / "space.yaml", {"train.lr": {"type": "float", "low": 5e-3, "high": 2e-2, "log": True}})
    return ["train", str(config), "--until-pass", "--space", str(space), *extra]


def until_pass_record(result) -> dict:
    line = next(x for x in result.output.splitlines() if x.startswith("until-pass: ") and "report" in x)
    return json.loads(Path(line.rsplit("report ", 1)[1].strip()).with_suffix(".json").read_text())


def test_until_pass_stops_at_pass_with_exit_status_0(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    result = runner.invoke(app, until_pass_args(tmp_path, corpus, gate=2.5, extra=["--trials", "2"]))
    assert result.exit_code == 0, result.output
    record = until_pass_record(result)
    assert record["outcome"] == "passed" and [r["best"]["gate"] for r in record["rounds"]] == ["FAIL", "PASS"]
    assert len(record["rounds"][1]["runs"]) == 2 and record["run_dir"] == record["rounds"][1]["best"]["run_dir"]
    assert json.loads((Path(record["run_dir"]) / "gate.json").read_text())["verdict"] == "PASS"


def test_until_pass_stops_when_the_budget_or_the_rounds_are_spent(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    one = float(json.loads((train(toy(corpus)) / "summary.json").read_text())["flops"])  # one run's FLOPs
    budget = 2.5 * one  # round 1, then one trial: a second trial would pass the budget
    (tmp_path / "a").mkdir()
    result = runner.invoke(app, until_pass_args(tmp_path / "a", corpus, gate=0.1, extra=[
        "--trials", "3", "--budget-flops", str(budget)]))
    assert result.exit_code == 3, result.output
    record = until_pass_record(result)
    assert record["outcome"] == "budget" and record["spent_flops"] == pytest.approx(2 * one)
    assert record["spent_flops"] <= budget and len(record["rounds"][1]["runs"]) == 1
    (tmp_path / "b").mkdir()
    result = runner.invoke(app, until_pass_args(tmp_path / "b", corpus, gate=0.1, extra=[
        "--trials", "1", "--max-rounds", "2"]))
    assert result.exit_code == 4, result.output
    record = until_pass_record(result)
    assert record["outcome"] == "rounds" and len(record["rounds"]) == 2
    study = load_study(read_plan(Path(record["tune_dir"])))
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]


def test_tune_bad_input_is_one_error_line_and_creates_nothing(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    config = write(tmp_path / "toy.yaml", toy(corpus).model_dump(mode="json"))
    space = write(tmp_path / "space.yaml", {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    cases = [
        (["tune"], "tune: give a CONFIG file, or --resume DIR"),
        (["tune", "--resume", str(tmp_path)], f"{tmp_path}: not a tuning folder (no tune.json)"),
        (["tune", str(config), "--sampler", "cmaes"], "--sampler cmaes / --pruner median: choose a sampler of"),
        (["tune", str(config), "--space", str(tmp_path / "nope.yaml")], "nope.yaml: cannot read search space"),
        (["tune", str(config), "--trials", "0"], "--trials 0 / --workers 1 / --startup-trials 5: trials and "),
        (["tune", str(config), "--storage", "nosuchdb://x"], "--storage nosuchdb://x: "),
        (["tune", str(config), "--space", str(space), "--set", "train.gpus=2"], "tune: trials train on one process"),
        (["train", str(config), "--until-pass"], "--until-pass: the config needs a gate (e.g. gate: {val_loss: "),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        lines = [x for x in result.output.splitlines() if x.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
            (args, result.output)
    assert not (tmp_path / "runs" / "tunes").exists() and not (tmp_path / "runs" / "optuna.db").exists()
