"""Studies: grid expansion, nested data across trials, bad input before training, the report, the GPU arm (the
kill -> resume lifecycle with a failing trial is in test_study_resume.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import genscale
from genscale.data.datasets import load_image_data
from genscale.errors import GenscaleError
from genscale.paths import runs_dir
from genscale.study.analysis import analyse_study, gpu_scaling
from genscale.study.execute import create_study, probe_gpu_scaling, read_plan
from genscale.study.spec import SCALING_AXES, expand_grid, load_study
from genscale.train.gan import gan_flops_per_step

GENSCALE = [sys.executable, "-m", "genscale.cli"]
TINY_RUN = {
    "data": {"source": "fashion-mnist", "size": 256},
    "model": {"arch": "gan-mlp", "size": "tiny"},
    "train": {"steps": 12, "batch_size": 32, "checkpoint_every": 4, "log_every": 3, "device": "cpu",
              "ema_decay": 0.0},
    "eval": {"n_samples": 200, "kid_subsets": 5, "kid_subset_size": 100,
             "classifier": {"epochs": 1, "train_size": 2000}},
}


def write_study(folder: Path, **fields) -> Path:
    study = {"name": "tiny-study", "run": TINY_RUN, "axes": {"data.size": [64, 128], "seed": [0, 1]},
             "metric": "fid_fmnist", "fit": {"bootstrap": 20},
             "gpu_probe": {"enabled": False},  # the probe has its own test
             **fields}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_grid_expands_in_axis_order_with_overrides_applied(tmp_path):
    study, base = load_study(write_study(tmp_path))
    trials = expand_grid(study, base)
    assert [t.axes for t in trials] == [{"data.size": 64, "seed": 0}, {"data.size": 64, "seed": 1},
                                        {"data.size": 128, "seed": 0}, {"data.size": 128, "seed": 1}]
    assert [(t.config.data.size, t.config.train.seed) for t in trials] == [(64, 0), (64, 1), (128, 0), (128, 1)]
    assert len({t.id for t in trials}) == 4 and trials[3].config.name == f"tiny-study/{trials[3].id}"
    assert all(t.config.model.arch == "gan-mlp" and t.config.train.steps == 12 for t in trials)


def test_base_file_is_read_relative_to_the_study_and_run_keys_override_it(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**TINY_RUN, "train": {**TINY_RUN["train"], "lr_d": 1e-3}}))
    path = write_study(tmp_path, base="base.yaml", run={"train": {"steps": 7}})
    study, base = load_study(path)
    cfg = expand_grid(study, base)[0].config
    assert (cfg.train.steps, cfg.train.lr_d, cfg.model.arch) == (7, 1e-3, "gan-mlp")


def test_trials_train_on_nested_subsets(tmp_path):
    study, base = load_study(write_study(tmp_path, axes={"data.size": [64, 128, 256]}))
    sets = []
    for t in expand_grid(study, base):
        x = load_image_data(t.config.data).train.x.numpy()
        sets.append({hashlib.sha256(row.tobytes()).hexdigest() for row in x})
    assert [len(s) for s in sets] == [64, 128, 256]
    assert sets[0] < sets[1] < sets[2]


def test_family_axis_gives_each_family_its_settings_and_counts_flops_its_way(tmp_path):
    from genscale.families import FAMILIES

    run = {k: v for k, v in TINY_RUN.items() if k != "model"}
    run["train"] = {k: v for k, v in run["train"].items() if k != "ema_decay"}
    path = write_study(tmp_path, run=run, axes={"model.family": ["gan", "vae", "ddpm"], "train.flops": [4e9]},
                       family_settings={"gan": {"model": {"arch": "gan-mlp", "size": "tiny"}},
                                        "vae": {"model": {"arch": "vae-mlp", "size": "tiny"}},
                                        "ddpm": {"model": {"size": "tiny", "timesteps": 50},
                                                 "eval": {"sampling_steps": 5}}})
    study_dir = create_study(path, tmp_path / "s")
    plan = read_plan(study_dir)
    trials = {t["axes"]["model.family"]: t for t in plan["trials"]}
    assert [t["config"]["model"]["arch"] for t in trials.values()] == ["gan-mlp", "vae-mlp", "unet"]
    assert trials["ddpm"]["config"]["eval"]["sampling_steps"] == 5
    for name, t in trials.items():  # steps = budget / that family's own counted FLOPs per step
        cfg = expand_grid(*load_study(path))[list(trials).index(name)].config
        per_step = FAMILIES[name].flops_per_step(cfg, load_image_data(cfg.data))
        assert t["config"]["train"]["steps"] == max(1, round(4e9 / per_step))
    assert len({t["config"]["train"]["steps"] for t in trials.values()}) == 3


def test_flops_axis_resolves_to_steps_from_counted_flops(tmp_path):
    study_dir = create_study(write_study(tmp_path, axes={"train.flops": [2e9, 4e9]}), tmp_path / "s")
    plan = read_plan(study_dir)
    cfg = expand_grid(*load_study(tmp_path / "study.yaml"))[0].config
    per_step = gan_flops_per_step(cfg, (1, 28, 28))
    assert [t["config"]["train"]["steps"] for t in plan["trials"]] == [round(2e9 / per_step), round(4e9 / per_step)]


@pytest.mark.parametrize("fields, message", [
    ({"axes": {"train.stepz": [1, 2]}}, "unknown axis 'train.stepz'"),
    ({"axes": {"data.size": []}}, "axis 'data.size' has no values"),
    ({"axes": {}}, "'axes' is empty"),
    ({"axes": {"data.size": [64, 10**6]}}, "data.size 1000000 is larger than the dataset's 55000"),
    ({"metric": "bleu"}, "metric 'bleu' is not produced"),
    ({"metric": "fid"}, "metric 'fid' is not produced"),  # the inception name, with the classifier extractor
    ({"metric": "is_fmnist"}, "not a lower-is-better"),
    ({"axes": {"init_from": ["a", "b"]}}, "unknown key 'model.init_from' for the gan family (it is a setting of gpt"),
    ({"axes": {"eval.extractor": ["inception", "fmnist-classifier"]}}, "cannot vary"),
    ({"axes": {"data.size": ["many"]}}, "key 'data.size'"),
    ({"axes": {"train.steps": [1], "train.flops": [1e9]}}, "not both"),
    ({"axes": {"model.size": ["tiny", "huge"]}}, "size 'huge' is not a preset of gan-mlp"),  # before: the trial failed
    ({"axes": {"train.flops": ["1.0e12"]}}, "YAML reads 1.0e12 as text: write 1.0e"),
    # the run's model keys are the gan's: a vae trial needs its own (family_settings)
    ({"axes": {"model.family": ["gan", "vae"]}}, "trial t001-family=vae: key 'model.arch': Input should be 'vae-conv'"),
])
def test_bad_study_fails_before_anything_runs(tmp_path, fields, message):
    with pytest.raises(GenscaleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_study(write_study(tmp_path, **fields))
    assert not (runs_dir() / "studies").exists()


def test_bad_study_is_one_error_line_on_the_command_line(tmp_path):
    done = subprocess.run([*GENSCALE, "study", "run", str(write_study(tmp_path, axes={"model.depth": [1]}))],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'study.yaml'}: unknown axis 'model.depth' "
                                                "(use data.size, model.size, train.steps, train.flops, seed, "
                                                "init_from, or another run-config key such as train.lr_d)"]


def _synthetic_study(folder: Path, law) -> Path:
    """A study folder whose trials 'finished' with metrics drawn from a known law (no training)."""
    study_path = write_study(folder, axes={"data.size": [500, 2000, 8000, 32000], "train.steps": [100, 200, 400]})
    study, base = load_study(study_path)
    trials = expand_grid(study, base)
    study_dir = folder / "study"
    (study_dir / "trials").mkdir(parents=True)
    (study_dir / "study.yaml").write_text(study_path.read_text())
    plan = {"name": "synthetic", "study": study.model_dump(mode="json"), "parent_run_id": "-", "dataset": "fm",
            "dataset_version": "v", "full_data_size": 55000, "operating_data_size": 16000,
            "trials": [{"id": t.id, "axes": t.axes, "config": t.config.model_dump(mode="json")} for t in trials]}
    (study_dir / "plan.json").write_text(json.dumps(plan))
    rng = np.random.default_rng(0)
    for t in trials:
        d, steps = t.config.data.size, t.config.train.steps
        c = 1e9 * steps
        fid = law(c, d) * np.exp(rng.normal(0, 0.01))
        folder_t = study_dir / "trials" / t.id
        folder_t.mkdir()
        (folder_t / "result.json").write_text(json.dumps({
            "trial": t.id, "axes": t.axes, "D": d, "N": 1000, "C": c, "steps": steps, "examples_seen": steps * 32,
            "epochs": steps * 32 / d, "train_seconds": 1.0, "device": "cpu", "metrics": {"fid_fmnist": fid},
            "extractor": "fmnist-classifier:test"}))
    return study_dir


def test_report_and_verdict_from_trials_of_a_known_law(tmp_path):
    # Data-limited law: doubling D at D0 = 16000 helps far more than doubling C at 4e11.
    study_dir = _synthetic_study(tmp_path, lambda c, d: 10 + 3 * (5e11 / c) ** 0.1 + 3e3 / d**0.5)
    analysis = analyse_study(study_dir)
    v = analysis["verdict"]
    assert v["decision"] == "data", v["sentence"]
    assert v["D0"] == 16000 and v["C0"] == 4e11
    true_data = 3e3 / 32000**0.5 - 3e3 / 16000**0.5
    lo, hi = v["data_2x"]["interval"]
    assert lo <= true_data <= hi or v["data_2x"]["change"] == pytest.approx(true_data, rel=0.1)
    assert v["sentence"].startswith("At 16,000 unique training examples and 4e+11 FLOPs")
    page = (study_dir / "report.html").read_text()
    assert v["sentence"] in page.replace("&#x27;", "'") and "<table>" in page
    assert "src=\"http" not in page and page.count("data:image/png;base64,") >= 4  # self-contained plots
    md = (study_dir / "report.md").read_text()
    linked = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(linked) >= 4 and all((study_dir / p).exists() for p in linked)
    assert analysis["data_constrained"]["available"]  # epochs > 1 in most trials
    assert not analysis["compute_optimal"]["available"]  # one model size
    study = genscale.Study.load(study_dir)  # the Python API reads the folder back, running nothing
    assert (study.name, study.metric, study.verdict.sentence, study.verdict.decision) == \
        ("synthetic", "fid_fmnist", v["sentence"], "data")
    assert [t["trial"] for t in study.trials] == [t["id"] for t in json.loads((study_dir / "plan.json").read_text())
                                                  ["trials"]] and study.failed == ()
    assert study.report == study_dir / "report.html" and study.verdict.details["D0"] == 16000


def test_treatment_axes_expand_and_bad_values_name_the_key():
    from genscale.study.spec import StudyConfig

    base = {"data": {"source": "dataset", "dataset": "fm-dirty"}}
    study = StudyConfig.model_validate({"axes": {"data.clean": [False, True],
                                                 "data.augment": ["none", "diffaugment"]}})
    trials = expand_grid(study, base)
    assert [(t.config.data.clean, t.config.data.augment) for t in trials] == [
        (False, "none"), (False, "diffaugment"), (True, "none"), (True, "diffaugment")]
    bad = StudyConfig.model_validate({"axes": {"data.augment": ["none", "flipp"]}})
    with pytest.raises(GenscaleError, match=r"key 'data.augment'.*unknown augmentation 'flipp'"):
        expand_grid(bad, base)


def test_init_from_axis_compares_pretrained_with_scratch(tmp_path):
    """init_from is a treatment axis: one trial per value, the run folder's name in the trial id."""
    study = tmp_path / "ft.yaml"
    study.write_text(yaml.safe_dump({
        "name": "ft", "metric": "val_loss",
        "run": {"data": {"source": "shakespeare", "size": 1000}, "model": {"family": "gpt", "size": "tiny"}},
        "axes": {"init_from": [None, str(tmp_path / "runs" / "abc123")], "train.steps": [10, 20]}}))
    trials = expand_grid(*load_study(study))
    assert [t.id for t in trials] == ["t000-init_from=None-steps=10", "t001-init_from=None-steps=20",
                                      "t002-init_from=abc123-steps=10", "t003-init_from=abc123-steps=20"]
    assert trials[2].config.model.init_from == str(tmp_path / "runs" / "abc123")
    assert "init_from" not in SCALING_AXES and "model.init_from" not in SCALING_AXES


def test_trial_ids_name_axes_that_share_a_last_part_in_full(tmp_path):
    study, base = load_study(write_study(tmp_path, axes={"data.size": [64], "model.size": ["tiny"],
                                                         "train.steps": [5]}))
    assert [t.id for t in expand_grid(study, base)] == ["t000-data.size=64-model.size=tiny-steps=5"]


def test_operating_point_outside_the_grid_fails_before_anything_runs(tmp_path):
    with pytest.raises(GenscaleError, match=r"operating_point.data_size: the verdict's D0 = 4000 \(and its 2x\) lies "
                                            r"more than 4x outside the 64-128 the trials observe"):
        create_study(write_study(tmp_path, operating_point={"data_size": 4000}))
    with pytest.raises(GenscaleError, match=r"operating_point.flops: the verdict's C0 = 1e\+15"):
        create_study(write_study(tmp_path, operating_point={"flops": 1e15}))
    assert not (runs_dir() / "studies").exists()


@pytest.mark.parametrize("preset", ["study-demo-image", "study-demo-text", "study-thesis-text"])
def test_shipped_presets_plan_their_operating_point_inside_the_range_they_observe(tmp_path, preset):
    plan = read_plan(create_study(preset, tmp_path / "s"))  # by name: the preset shipped in the package
    grid = [t for t in plan["trials"] if t["role"] == "grid"]
    sizes = [t["config"]["data"]["size"] or plan["full_data_size"] for t in grid]
    flops = [t["planned_flops"] for t in grid]
    d0, c0 = plan["operating_data_size"], plan["operating_flops"]
    assert min(sizes) <= d0 <= max(sizes) and min(flops) <= c0 <= max(flops)
    assert all(t["config"]["eval"]["every"] for t in grid)  # every trial has a curve: the study fits its best


def test_verify_adds_the_two_verdict_arms_at_the_operating_point(tmp_path):
    study_dir = create_study(write_study(tmp_path, axes={"data.size": [64, 128], "train.steps": [6, 12]},
                                         operating_point={"data_size": 64}, verify=True), tmp_path / "s")
    plan = read_plan(study_dir)
    verify = {t["id"]: t for t in plan["trials"] if t["role"] == "verify"}
    assert sorted(verify) == ["v00-verify-data2x", "v01-verify-compute2x"]
    grid_flops = max(t["planned_flops"] for t in plan["trials"] if t["role"] == "grid")
    assert plan["operating_flops"] == grid_flops
    data2x, compute2x = verify["v00-verify-data2x"], verify["v01-verify-compute2x"]
    assert (data2x["config"]["data"]["size"], data2x["config"]["train"]["steps"]) == (128, 12)
    assert (compute2x["config"]["data"]["size"], compute2x["config"]["train"]["steps"]) == (64, 24)
    assert compute2x["planned_flops"] == 2 * grid_flops
    assert data2x["axes"] == {"data.size": 128, "train.steps": 12, "verify": "data2x"}
    assert compute2x["axes"] == {"data.size": 64, "train.steps": 24, "verify": "compute2x"}


def test_gpus_axis_trains_each_trial_on_its_processes_and_measures_scaling(tmp_path):
    """train.gpus: [1, 2] on the CPU: the 2-process trial is 2 gloo ranks started from its Ray worker (which asks
    Ray for 2 cores); both record world size and throughput, the analysis their efficiency, the report its table."""
    study = write_study(tmp_path, axes={"train.gpus": [1, 2]})
    done = subprocess.run([*GENSCALE, "study", "run", str(study), "--workers", "1", "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["world_size"]: r for r in map(json.loads, map(Path.read_text,
                                                                 (tmp_path / "s").glob("trials/*/result.json")))}
    assert sorted(results) == [1, 2]
    one, two = results[1], results[2]
    assert two["C"] == one["C"]  # FLOPs summed over ranks: the same work, split
    assert two["metrics"]["fid_fmnist"] == pytest.approx(one["metrics"]["fid_fmnist"], rel=1e-3)
    analysis = json.loads((tmp_path / "s" / "analysis.json").read_text())
    (pair,) = analysis["gpus"]["doubling"]
    assert pair["efficiency"] == pytest.approx(two["examples_per_second"] / (2 * one["examples_per_second"]))
    assert analysis["gpus"]["efficiency"]["pairs"] == 1
    assert "Data-parallel scaling (train.gpus)" in (tmp_path / "s" / "report.md").read_text()


def test_without_a_gpus_axis_the_study_probes_scaling_itself_and_says_what_it_cost(tmp_path):
    study_dir = create_study(write_study(tmp_path, gpu_probe={"enabled": True, "steps": 8}), tmp_path / "s")
    plan = read_plan(study_dir)
    record = probe_gpu_scaling(study_dir, plan)
    assert [r["world_size"] for r in record["results"]] == [1, 2] and record["cost_seconds"] > 0
    largest = max(plan["trials"], key=lambda t: t["planned_flops"])["id"]
    assert record["of_trial"] == largest and record["steps"] == 8
    scaling = gpu_scaling(record["results"])
    one, two = (r["examples_per_second"] for r in record["results"])
    assert scaling["efficiency"]["median"] == pytest.approx(two / (2 * one)) and scaling["efficiency"]["pairs"] == 1
    assert probe_gpu_scaling(study_dir, plan) == record  # measured once: a resumed study reuses it
    assert (study_dir / "gpu_probe" / "runs" / "mlflow.db").exists()  # its runs: the probe's own store
