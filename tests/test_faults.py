"""Faults a run meets: kills at random points, damaged or poisoned checkpoints, a lost pointer, divergence, and
several processes starting on one new tracking store. Each ends in the last intact state or one clear error."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import tiny_config, tree_hashes
from genscale.cli import app
from genscale.errors import GenscaleError
from genscale.pipeline import evaluate_run, sample_run, train
from genscale.tracking import resolve_run_dir, tracking_uri
from genscale.train import gan as gan_module
from genscale.train.checkpoint import (
    NonFiniteCheckpointError,
    checkpoint_steps,
    load_checkpoint,
    save_checkpoint,
)
from genscale.train.loop import NonFiniteLossError


def tensors_at(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step_{step:07d}.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def count_steps(monkeypatch) -> dict[str, int]:
    """Counts GanStep calls from now on (steps a run actually trains)."""
    original, calls = gan_module.GanStep.__call__, {"n": 0}

    def counted(self, reals, autocast):
        calls["n"] += 1
        return original(self, reals, autocast)

    monkeypatch.setattr(gan_module.GanStep, "__call__", counted)
    return calls


def genscale_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "genscale.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def test_sigkill_at_random_points_resumes_bit_identical(tmp_path):
    """`genscale train` killed with SIGKILL three times at seeded random steps (a checkpoint every step, so some kills
    land mid-write); each resume continues, and the last ends exactly where an uninterrupted run does."""
    cfg = tiny_config(train__steps=120, train__checkpoint_every=1, train__log_every=10, eval__on_train_end=False)
    reference_dir = train(cfg)
    reference = tensors_at(reference_dir, 120)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    targets = sorted(random.Random(11).sample(range(10, 110), 3))
    run_dir = None
    for target in targets:
        proc = genscale_process(*(["train", "--resume", str(run_dir)] if run_dir else ["train", str(config)]))
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if run_dir is None:
                run_dir = next((p.parent for p in (tmp_path / "runs").glob("*/config.yaml")
                                if p.parent != reference_dir), None)
            steps = checkpoint_steps(run_dir / "checkpoints") if run_dir else []
            if steps and steps[0] >= target:
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"the run ended before step {target}: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert checkpoint_steps(run_dir / "checkpoints")[0] < 120
    resumed = tensors_at(train(resume=str(run_dir)), 120)
    assert_same(resumed, reference)
    assert not list((run_dir / "checkpoints").glob(".*.tmp-*"))  # writes cut short by a kill were cleared


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run with checkpoints at steps 4 and 8, in a store of its own."""
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("GENSCALE_RUNS", str(root / "runs"))
        run_dir = train(tiny_config(train__steps=8, eval__on_train_end=False))
    assert checkpoint_steps(run_dir / "checkpoints") == [8, 4]
    return run_dir


def damage(path: Path, kind: str) -> None:
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "emptied":
        path.write_bytes(b"")
    elif kind == "nan-filled":  # a well-formed file whose values are NaN: its sha256 no longer matches either
        save_file({k: v.float().fill_(float("nan")) if v.is_floating_point() else v
                   for k, v in load_file(path).items()}, path)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "emptied", "nan-filled"])
def test_damaged_latest_checkpoint_falls_back_to_the_intact_one(finished_run, tmp_path, kind, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    damage(run_dir / "checkpoints" / "step_0000008.safetensors", kind)

    ckpt = load_checkpoint(run_dir / "checkpoints")
    assert ckpt.step == 4 and len(ckpt.passed_over) == 1 and ckpt.passed_over[0].startswith("step 8: ")
    assert_same(ckpt.tensors, tensors_at(finished_run, 4))

    records, _ = evaluate_run(str(run_dir), n=100)  # scores step 4, not the damaged step 8
    assert records["fid_fmnist"]["n_gen"] == 100
    assert sample_run(str(run_dir), n=4, out=tmp_path / "grid.png").exists()

    calls = count_steps(monkeypatch)  # resume trains steps 5-8 again and ends where the run ended
    train(resume=str(run_dir))
    assert calls["n"] == 4
    assert_same(tensors_at(run_dir, 8), tensors_at(finished_run, 8))


def test_no_intact_checkpoint_is_one_error_and_nothing_is_deleted(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    damage(run_dir / "checkpoints" / "step_0000008.safetensors", "truncated")
    damage(run_dir / "checkpoints" / "step_0000004.safetensors", "nan-filled")
    before = tree_hashes(run_dir / "checkpoints")
    with pytest.raises(GenscaleError, match=r"no intact checkpoint \(step 8: .*; step 4: "):
        train(resume=str(run_dir))
    for args in (["eval", str(run_dir), "--n", "100"], ["sample", str(run_dir), "-o", str(tmp_path / "g.png")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and "no intact checkpoint" in result.output, result.output
        assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert tree_hashes(run_dir / "checkpoints") == before  # resume neither restarted nor deleted anything


def test_resume_without_the_pointer_continues_from_the_newest_checkpoint(finished_run, tmp_path, monkeypatch):
    """Before: a missing latest.json restarted the run from step 0 and deleted the later checkpoints."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "checkpoints" / "step_0000008.safetensors").unlink()  # as if killed after step 4's checkpoint
    (run_dir / "checkpoints" / "step_0000008.json").unlink()
    (run_dir / "checkpoints" / "latest.json").unlink()
    calls = count_steps(monkeypatch)
    train(resume=str(run_dir))
    assert calls["n"] == 4  # steps 5-8 only
    assert_same(tensors_at(run_dir, 8), tensors_at(finished_run, 8))


def test_a_diverged_run_keeps_only_finite_checkpoints():
    """Before: with checkpoint_every < log_every, checkpoints full of NaN were written and named "last good"."""
    cfg = tiny_config(train__lr_d=1e30, train__steps=20, train__checkpoint_every=1, train__log_every=10,
                      eval__on_train_end=False)
    with pytest.raises(NonFiniteLossError, match="training diverged at step 1: loss_g is nan") as caught:
        train(cfg)
    run_dir = resolve_run_dir("latest")
    for step in checkpoint_steps(run_dir / "checkpoints"):
        assert all(torch.isfinite(v).all() for v in tensors_at(run_dir, step).values() if v.is_floating_point())
    assert "last good checkpoint" not in str(caught.value)  # there is none: the run diverged at its first step
    assert MlflowClient(tracking_uri()).get_run(run_dir.name).info.status == "FAILED"


def test_the_store_refuses_a_non_finite_checkpoint(tmp_path):
    with pytest.raises(NonFiniteCheckpointError, match=r"step 3: 1 tensor\(s\) hold NaN or infinity \(first: w\)"):
        save_checkpoint(tmp_path, 3, {"w": torch.tensor([1.0, float("inf")]), "n": torch.tensor([7])}, {})
    assert not list(tmp_path.iterdir())


def test_eval_leaves_the_run_status_as_it_was():
    """Before: eval of a FAILED run flipped it to FINISHED."""
    client = MlflowClient(tracking_uri())
    run_dir = train(tiny_config(train__steps=4, eval__on_train_end=False))
    client.set_terminated(run_dir.name, status="FAILED")
    evaluate_run(str(run_dir), n=100)
    run = client.get_run(run_dir.name)
    assert run.info.status == "FAILED" and "fid_fmnist" in run.data.metrics


def test_a_copied_run_folder_is_evaluated_offline_against_the_users_store(finished_run, tmp_path):
    """Before: MlflowException (run not found), and the folder's own tracking.uri decided where eval wrote."""
    copy = tmp_path / "copied-run"
    shutil.copytree(finished_run, copy)
    elsewhere = tmp_path / "elsewhere" / "anywhere.db"
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["tracking"]["uri"] = f"sqlite:///{elsewhere}"
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["eval", str(copy), "--n", "100"])
    assert result.exit_code == 0, result.output
    assert "is not in the tracking store" in result.output and "fid_fmnist" in result.output
    assert not elsewhere.parent.exists()
    assert "fid_fmnist" in json.loads((copy / "metrics.json").read_text())


def test_four_processes_start_on_one_new_store(tmp_path):
    """Before: MLflow's schema migration raced ("duplicate column name", alembic errors) and processes crashed.
    Four processes create a run each in one new store at once, as four `genscale train` do first thing."""
    start = tmp_path / "start"
    code = ("import os, time\n"
            "from genscale.tracking import Tracker\n"
            f"while not os.path.exists({str(start)!r}): time.sleep(0.01)\n"  # all four begin together
            "Tracker(None, 'genscale', run_name='racer').finish()\n")
    env = {**os.environ, "GENSCALE_RUNS": str(tmp_path / "new-store")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for _ in range(4)]
    time.sleep(3)  # the imports are done
    start.touch()
    errors = [p.communicate(timeout=120)[1].decode()[-1500:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    client = MlflowClient(f"sqlite:///{tmp_path / 'new-store' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("genscale").experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
