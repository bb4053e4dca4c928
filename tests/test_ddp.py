"""Data-parallel training on the CPU (gloo, 2 processes): the same computation as one process, a failing rank,
and a resume at another world size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from genscale.config import RunConfig
from genscale.families import FAMILIES, family_of
from genscale.pipeline import load_data, train
from genscale.train.checkpoint import checkpoint_steps, load_checkpoint
from genscale.train.distributed import SINGLE, World
from genscale.train.machinery import autocast_for
from tests.test_families import family_config

HERE = Path(__file__).parent / "ddp"
STEPS = 3


def no_dropout(cfg: RunConfig) -> RunConfig:
    """Dropout masks come from each rank's own generator (the one thing that depends on the world size); the GAN is
    a DCGAN (batch norm) and the GPT accumulates two micro-batches."""
    raw = cfg.model_dump(mode="json")
    if "dropout" in raw["model"]:
        raw["model"]["dropout"] = 0.0
    if cfg.model.family == "gan":
        raw["model"]["arch"] = "dcgan"  # batch norm in both networks: synced over the ranks
    if cfg.model.family == "gpt":
        raw["train"]["grad_accum"] = 2  # nanoGPT's rule: one micro-batch per rank
    return RunConfig.model_validate(raw)


def torchrun(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_world_rows_split_a_global_batch_into_contiguous_equal_shares():
    rows = [World(r, 4).rows(8) for r in range(4)]
    assert [list(range(8))[s] for s in rows] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(Exception, match="train.batch_size: 6 does not divide evenly over 4"):
        World(0, 4).share(6, "train.batch_size")


def test_data_parallel_steps_equal_one_process_for_every_family(tmp_path):
    """STEPS steps on 2 gloo ranks (each its half of every global batch, its rows of every random draw, batch norm
    over the global batch, gradients averaged) give the weights one process gives with the same global batch."""
    names = sorted(FAMILIES)
    configs = []
    for name in names:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(no_dropout(family_config(name, tmp_path)).model_dump(mode="json")))
        configs.append(str(path))
    done = torchrun(str(HERE / "steps.py"), str(tmp_path), str(STEPS), *configs)
    assert done.returncode == 0, done.stderr[-3000:]
    device = torch.device("cpu")
    for i, name in enumerate(names):
        cfg = RunConfig.model_validate(yaml.safe_load(Path(configs[i]).read_text()))
        recipe = family_of(cfg).recipe(cfg, load_data(cfg), device, resume=False, world=SINGLE)
        values = torch.stack([recipe.step(s, autocast_for(device, "fp32")) for s in range(STEPS)])
        tensors, _ = recipe.tensors()
        ddp = torch.load(tmp_path / f"{i}.pt")
        torch.testing.assert_close(ddp["values"], values, rtol=1e-5, atol=1e-5, msg=f"{name}: logged values")
        for key, ddp_tensor in ddp["tensors"].items():
            torch.testing.assert_close(ddp_tensor, tensors[key], rtol=1e-4, atol=2e-5, msg=f"{name}: {key}")
        assert set(ddp["tensors"]) == {k for k in tensors if not k.startswith("rng.")}


def vae_config(tmp_path: Path, steps: int) -> Path:
    cfg = family_config("vae", tmp_path).model_dump(mode="json")
    cfg["train"].update(steps=steps, checkpoint_every=3, log_every=1)
    cfg["eval"]["on_train_end"] = False
    path = tmp_path / "vae.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def genscale(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genscale", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_checkpoint(run_dir / "checkpoints").tensors.items() if k.startswith("vae.")}


def test_a_failing_rank_stops_both_with_one_error_and_the_run_resumes_at_another_world_size(tmp_path):
    config = vae_config(tmp_path, steps=6)
    # the uninterrupted reference: one process (what 2 processes compute: the test above)
    uninterrupted = train(RunConfig.model_validate(yaml.safe_load(config.read_text())))
    runs = Path(os.environ["GENSCALE_RUNS"])

    # rank 1 raises at step 4, after the step-3 checkpoint: both ranks end, one error line, no traceback
    failed = genscale("train", str(config), "--nproc", "2", env={
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "GENSCALE_TEST_FAIL_RANK": "1", "GENSCALE_TEST_FAIL_STEP": "4"})
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: injected failure at step 4"], failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    (broken,) = [p for p in runs.iterdir() if (p / "config.yaml").exists() and p != uninterrupted]
    assert checkpoint_steps(broken / "checkpoints") == [3]
    assert load_checkpoint(broken / "checkpoints").step == 3  # intact: sha256, parse, finite

    # resumed by one process (another world size), it ends where the uninterrupted run ended
    resumed = genscale("train", "--resume", str(broken), "--nproc", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((broken / "summary.json").read_text())["world_size"] == 1
    a, b = final_weights(uninterrupted), final_weights(broken)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_batch_that_does_not_divide_over_the_processes_is_one_error_before_any_run(tmp_path):
    config = vae_config(tmp_path, steps=2)  # batch_size 32
    done = genscale("train", str(config), "--nproc", "3")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert [ln for ln in done.stderr.splitlines() if ln.startswith("error:")] == [
        "error: --nproc 3: key 'train': batch_size 32 does not divide over train.gpus = 3 data-parallel processes; use "
        "a multiple of 3"]
    assert not Path(os.environ["GENSCALE_RUNS"]).exists() or not any(Path(os.environ["GENSCALE_RUNS"]).glob("*/"))
    gpt = RunConfig.model_validate(yaml.safe_load(Path(config).read_text())).model_dump(mode="json")
    with pytest.raises(Exception, match="batch_size 5 nor grad_accum 3 does not divide over train.gpus = 2"):
        RunConfig.model_validate({**gpt, "model": {"family": "gpt", "size": "tiny"},
                                  "train": {"batch_size": 5, "grad_accum": 3, "gpus": 2}, "eval": {}, "gate": {},
                                  "data": {"source": "shakespeare"}})
