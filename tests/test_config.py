from pathlib import Path

import pytest

from genscale.config import RunConfig, load_config
from genscale.errors import GenscaleError
from genscale.models import PRESETS

ALL = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
CONFIGS = [p for p in ALL if not p.name.startswith("study-")]
STUDIES = [p for p in ALL if p.name.startswith("study-")]


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.model.size in PRESETS[cfg.model.arch]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_shipped_study_expands_and_checks(path):
    from genscale.study.spec import check_metric, expand_grid, load_study

    study, base = load_study(path)
    trials = expand_grid(study, base, str(path))
    check_metric(study, trials, str(path))
    assert len(trials) >= 4 and all(t.config.model.size in PRESETS[t.config.model.arch] for t in trials)


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(GenscaleError, match=r"c\.yaml: unknown key 'train\.stpes'"):
        load_config(write(tmp_path, "train:\n  stpes: 10\n"))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(GenscaleError, match=r"c\.yaml: key 'train\.batch_size': .*integer.*'many'"):
        load_config(write(tmp_path, "train:\n  batch_size: many\n"))
    with pytest.raises(GenscaleError, match=r"key 'model\.arch'"):
        load_config(write(tmp_path, "model:\n  arch: stylegan9\n"))
    with pytest.raises(GenscaleError, match=r"key 'gate\.fid_fmnist': .*needs 'max' or 'min'"):
        load_config(write(tmp_path, "gate:\n  fid_fmnist: {}\n"))


def test_overrides(tmp_path):
    path = write(tmp_path, "train:\n  steps: 10\n")
    cfg = load_config(path, ["train.steps=20", "model.arch=gan-mlp", "gate.fid_fmnist.max=3.5"])
    assert (cfg.train.steps, cfg.model.arch, cfg.gate["fid_fmnist"].max) == (20, "gan-mlp", 3.5)
    with pytest.raises(GenscaleError, match=r"unknown key 'train\.step'"):
        load_config(path, ["train.step=20"])
    with pytest.raises(GenscaleError, match="--set train.steps: expected KEY=VALUE"):
        load_config(path, ["train.steps"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(GenscaleError, match=r"c\.yaml: invalid YAML at line 2"):
        load_config(write(tmp_path, "train:\n\tsteps: 1\n"))
    with pytest.raises(GenscaleError, match=r"missing\.yaml: cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_a_boolean_is_not_a_number(tmp_path):
    """Before: train.steps=true was taken as 1 step."""
    path = write(tmp_path, "train:\n  steps: 10\n")
    for override, key in [("train.steps=true", "train.steps"), ("train.lr_d=false", "train.lr_d"),
                          ("data.channels=true", "data.channels"), ("train.betas=[true, 0.9]", "train.betas.0")]:
        with pytest.raises(GenscaleError, match=rf"key '{key}': .*expected a number, got the boolean"):
            load_config(path, [override])


def test_unknown_model_size_is_a_config_error(tmp_path):
    """Before: a gpt config with an unknown size tokenized the whole corpus, then failed."""
    path = write(tmp_path, "model:\n  family: gpt\n  size: huge\ndata:\n  source: shakespeare\n")
    with pytest.raises(GenscaleError, match=r"key 'model': .*size 'huge' is not a preset of gpt \(choose tiny"):
        load_config(path)
