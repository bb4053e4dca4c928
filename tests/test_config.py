import json
from pathlib import Path

import pytest

from genscale.config import PRESETS, RunConfig, load_config
from genscale.errors import GenscaleError
from genscale.families import family_of

ALL = sorted(PRESETS.glob("*.yaml"))
CONFIGS = [p for p in ALL if not p.name.startswith("study-")]
STUDIES = [p for p in ALL if p.name.startswith("study-")]


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.model.size in family_of(cfg).presets()[cfg.model.arch]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_shipped_study_expands_and_checks(path):
    from genscale.study.spec import check_metric, expand_grid, load_study

    study, base = load_study(path)
    trials = expand_grid(study, base, str(path))
    check_metric(study, trials, str(path))
    assert len(trials) >= 4 and all(t.config.model.size in family_of(t.config).presets()[t.config.model.arch]
                                    for t in trials)


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
    with pytest.raises(GenscaleError, match=r"key 'gate\.fid_fmnist': .*needs 'max', 'min' or 'max_over_floor'"):
        load_config(write(tmp_path, "gate:\n  fid_fmnist: {}\n"))


def test_overrides(tmp_path):
    path = write(tmp_path, "train:\n  steps: 10\n")
    cfg = load_config(path, ["train.steps=20", "model.arch=gan-mlp", "gate.fid_fmnist.max=3.5"])
    assert (cfg.train.steps, cfg.model.arch, cfg.gate.thresholds["fid_fmnist"].max) == (20, "gan-mlp", 3.5)
    with pytest.raises(GenscaleError, match=r"unknown key 'train\.step'"):
        load_config(path, ["train.step=20"])
    with pytest.raises(GenscaleError, match="--set train.steps: expected KEY=VALUE"):
        load_config(path, ["train.steps"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(GenscaleError, match=r"c\.yaml: invalid YAML at line 2"):
        load_config(write(tmp_path, "train:\n\tsteps: 1\n"))
    with pytest.raises(GenscaleError, match=r"missing\.yaml: no such file, nor a shipped run config preset"):
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


def test_settings_of_another_family_are_errors_naming_the_key(tmp_path):
    """Before: one flat section per kind, so a GAN config with train.grad_accum trained with it silently unread."""
    with pytest.raises(GenscaleError, match=r"unknown key 'train\.grad_accum' for the gan family \(it is a setting "
                                            r"of gpt"):
        load_config(write(tmp_path, "train:\n  grad_accum: 4\n"))
    with pytest.raises(GenscaleError, match=r"unknown key 'model\.loss' for the gpt family \(it is a setting of gan"):
        load_config(write(tmp_path, "data: {source: shakespeare}\nmodel: {family: gpt, loss: wgan-gp}\n"))
    with pytest.raises(GenscaleError, match=r"unknown key 'eval\.iwae_k' for the ddpm family \(it is a setting of "
                                            r"vae"):
        load_config(write(tmp_path, "model: {family: ddpm}\neval: {iwae_k: 10}\n"))
    with pytest.raises(GenscaleError, match=r"key 'model\.family': unknown family 'diffusion' \(choose gan, gpt, vae, "
                                            r"ddpm\)"):
        load_config(write(tmp_path, "model: {family: diffusion}\n"))


def test_each_family_has_its_own_defaults_and_every_field_is_documented():
    from genscale.families import FAMILIES

    gan = RunConfig()
    gpt = RunConfig.model_validate({"data": {"source": "shakespeare"}, "model": {"family": "gpt"}})
    assert gan.train.betas == (0.5, 0.999) and gpt.train.betas == (0.9, 0.95)  # DCGAN's, GPT-3's
    assert RunConfig.model_validate({"model": {"family": "ddpm"}}).train.lr == 2e-4  # Ho et al.'s
    for family in FAMILIES.values():
        for section in (family.model_config, family.train_config, family.eval_config):
            undocumented = [k for k, f in section.model_fields.items() if not f.description]
            assert not undocumented, (section.__name__, undocumented)
    schema = json.dumps(RunConfig.model_json_schema())
    assert "classifier-free guidance" in schema and "importance samples" in schema


def test_a_run_config_saved_before_per_family_sections_still_loads():
    """A run folder's config.yaml from before held every family's settings (and train.betas: null); it loads,
    dropping what its family never read. The same keys in a user's config are errors."""
    from genscale.config import config_from_dict, saved_config

    old = RunConfig().model_dump(mode="json")
    old["train"].update({"betas": None, "lr": 1e-3, "grad_accum": 1, "warmup_steps": 100, "compile": False})
    old["model"].update({"block_size": 256, "init_from": None})
    old["eval"].update({"val_tokens": 65536, "top_k": None})
    cfg = saved_config(old, "config.yaml")
    assert cfg.train.betas == (0.5, 0.999) and cfg.model.z_dim == 100
    with pytest.raises(GenscaleError, match="unknown key"):
        config_from_dict(old, "config.yaml")
    with pytest.raises(GenscaleError, match=r"key 'train\.steps'"):
        saved_config({**old, "train": {**old["train"], "steps": 0}}, "config.yaml")  # what it keeps is checked
