"""The Python API (genscale/api.py): the example notebook runs, its objects match the run folders, errors are one
line, and `import genscale` imports nothing heavy."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import genscale
from genscale.errors import GenscaleError
from genscale.pipeline import run_sampler

EXAMPLE = Path(__file__).parents[1] / "examples" / "api.py"


def test_the_example_runs_and_its_objects_are_the_run_folders(capsys):
    names = runpy.run_path(str(EXAMPLE), run_name="__main__")
    printed = capsys.readouterr().out
    run, gpt = names["run"], names["gpt"]
    assert isinstance(run, genscale.Run) and run.config.train.lr_g == 3e-4  # the override reached the config
    stored = json.loads((run.folder / "metrics.json").read_text())
    assert run.metrics["fid_fmnist"] == stored["fid_fmnist"]["value"] and stored["fid_fmnist"]["n_gen"] == 400
    assert f"fid_fmnist = {stored['fid_fmnist']['value']:.4f}" in printed
    gate = json.loads((run.folder / "gate.json").read_text())
    assert run.gate.passed is (gate["verdict"] == "PASS") and list(run.gate.reasons) == gate["reasons"]
    images = names["images"]
    assert images.shape == (16, 1, 28, 28) and images.dtype == torch.float32
    reference = run_sampler(str(run.folder))[1].images(16, seed=7)  # uint8, as `genscale sample` draws them
    assert torch.equal(images, reference.float() / 255)
    assert gpt.metrics["val_loss"] == json.loads((gpt.folder / "metrics.json").read_text())["val_loss"]["value"]
    texts = names["texts"]
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    assert genscale.sample(gpt, 2, prompt="ROMEO:", max_new_tokens=40, seed=0) == texts  # seeded


def test_bad_input_is_one_genscale_error_line(tmp_path):
    cases = [
        (lambda: genscale.train({"model": {"arch": "gan-mlp"}, "trian": {}}), "unknown key 'trian'"),
        (lambda: genscale.train({"model": {"arch": "gan-mlp"}}, overrides=["train.stepz=3"]), "stepz"),
        (lambda: genscale.train(), "give a config"),
        (lambda: genscale.train({"model": {"arch": "gan-mlp"}}, resume="abc"), "resume continues"),
        (lambda: genscale.load("nosuchrun"), "no such run"),
        (lambda: genscale.Study.load(tmp_path), "not a study folder"),
        (lambda: genscale.evaluate("nosuchrun", extractor="vgg"), "unknown extractor 'vgg'"),
        (lambda: genscale.sample("nosuchrun", 0), "n >= 1"),
    ]
    for call, message in cases:
        with pytest.raises(GenscaleError) as e:
            call()
        assert message in str(e.value) and "\n" not in str(e.value)


def test_import_genscale_imports_neither_torch_nor_mlflow():
    code = ("import sys, genscale\n"
            "print(sorted(m for m in ('torch', 'mlflow', 'rich', 'genscale.api') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert callable(genscale.train) and callable(genscale.study)  # the sub-packages of those names, callable
    from genscale.train.loop import fit  # and still packages

    assert fit.__module__ == "genscale.train.loop"
