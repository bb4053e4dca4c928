"""The CLI as scripts use it: `runs --json --filter`, `--strict` exit codes, `config show|schema`, start-up without a
store, and `study run --dry-run` creating nothing."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from genscale.cli import app
from genscale.config import PRESETS, load_config, preset_names
from genscale.gate import EXIT_GATE_FAILED
from genscale.paths import runs_dir

runner = CliRunner()
RUN_CONFIGS = [PRESETS / f"{name}.yaml" for name in preset_names("run config")]


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_strict_exit_codes_and_runs_filter_as_json(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(train__steps=3, eval__n_samples=100).model_dump(mode="json")))
    code, output = invoke("train", str(config), "--strict", "--set", "gate.fid_fmnist.max=1e9")
    assert code == 0 and "PASS" in output, output
    code, output = invoke("train", str(config), "--strict", "--set", "gate.fid_fmnist.max=0.001")
    assert code == EXIT_GATE_FAILED and "FAIL" in output, output

    rows = json.loads(invoke("runs", "--json")[1])
    assert [r["tags"]["gate"] for r in rows] == ["FAIL", "PASS"]  # newest first
    passed, failed = rows[1], rows[0]
    assert Path(passed["folder"]) == runs_dir() / passed["id"] and passed["family"] == "gan"
    assert passed["arch"] == "gan-mlp" and passed["params"]["train.steps"] == "3" and passed["metrics"]["flops"] > 0
    assert passed["start_time"] <= failed["start_time"]
    chosen = json.loads(invoke("runs", "--json", "--filter", "tags.gate = 'FAIL'")[1])
    assert [r["id"] for r in chosen] == [failed["id"]]
    assert len(json.loads(invoke("runs", "--json", "--filter", "params.\"train.steps\" = '4'")[1])) == 0
    chosen = json.loads(invoke("runs", "--json", "--filter", "params.\"train.steps\" = '3'", "--limit", "1")[1])
    assert [r["id"] for r in chosen] == [failed["id"]]
    code, output = invoke("runs", "--filter", "tags.gate = 'PASS'")
    assert code == 0 and passed["id"][:8] in output and failed["id"][:8] not in output

    assert invoke("eval", failed["id"], "--n", "100")[0] == 0  # FAIL printed, exit 0 without --strict
    code, output = invoke("eval", failed["id"], "--n", "100", "--strict")
    assert code == EXIT_GATE_FAILED and "FAIL" in output
    assert invoke("eval", passed["id"], "--n", "100", "--strict")[0] == 0

    bad = runner.invoke(app, ["runs", "--filter", "metrics.fid_fmnist <<< 3"])
    lines = bad.output.strip().splitlines()
    assert bad.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: --filter 'metrics.fid_fmnist <<< 3'")


def test_runs_without_a_store_says_none_without_importing_mlflow(tmp_path):
    """What makes `genscale runs` fast where nothing was tracked yet: no MLflow import, no store or folder made."""
    code = ("import sys; from genscale.tracking import list_runs; rows = list_runs(); "
            "print(rows, 'mlflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split() == ["[]", "False"], done.stderr
    assert not runs_dir().exists() and list(tmp_path.iterdir()) == []
    assert json.loads(invoke("runs", "--json")[1]) == []


def test_config_show_round_trips_with_overrides(tmp_path):
    for path in RUN_CONFIGS:
        code, output = invoke("config", "show", str(path), "--set", "train.steps=7", "--set", "name=shown")
        assert code == 0, output
        shown = tmp_path / path.name
        shown.write_text(output)
        again = load_config(shown)
        assert again == load_config(path, ["train.steps=7", "name=shown"]), path
        assert again.train.steps == 7 and yaml.safe_load(output)["train"]["steps"] == 7
        assert set(yaml.safe_load(output)["train"]) >= {"seed", "device", "precision"}  # defaults filled in
    bad = runner.invoke(app, ["config", "show", str(RUN_CONFIGS[0]), "--set", "train.stepz=3"])
    assert bad.exit_code == 1 and "unknown key 'train.stepz'" in bad.output


def test_config_schema_validates_every_shipped_config_and_rejects_what_load_config_rejects():
    schema = json.loads(invoke("config", "schema")[1])
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in RUN_CONFIGS:
        raw = yaml.safe_load(path.read_text())
        assert validator.is_valid(raw), (path, next(validator.iter_errors(raw)).message[:300])
        resolved = yaml.safe_load(invoke("config", "show", str(path))[1])
        assert validator.is_valid(resolved), path
    gpt = yaml.safe_load((PRESETS / "gpt-char-shakespeare.yaml").read_text())
    for bad in ({**gpt, "trian": {}}, {**gpt, "train": {**gpt["train"], "lr_g": 1e-3}},  # a gan key in a gpt run
                {**gpt, "model": {**gpt["model"], "family": "diffusion"}}):
        assert not validator.is_valid(bad)
    assert runner.invoke(app, ["settings", "--json"]).exit_code != 0  # moved to `config schema`


def _tree(*roots: Path) -> list[str]:
    return sorted(str(p) for root in roots if root.exists() for p in [root, *root.rglob("*")])


def test_study_dry_run_creates_nothing_and_counts_the_flops_a_trial_trains(tmp_path, monkeypatch, capsys):
    import torch

    from genscale.cli import _print_dry_run
    from genscale.families import family_of
    from genscale.paths import data_dir
    from genscale.study.spec import expand_grid, load_study
    from genscale.train.distributed import SINGLE
    from genscale.train.loop import fit

    run = {"data": {"source": "fashion-mnist", "size": 64},
           "model": {"arch": "gan-mlp", "size": "tiny"},
           "train": {"steps": 2, "batch_size": 32, "device": "cpu"}, "eval": {"n_samples": 100}}
    spec = tmp_path / "spec" / "study.yaml"
    spec.parent.mkdir()
    spec.write_text(yaml.safe_dump({"name": "dry", "run": run, "axes": {"train.steps": [2, 3], "seed": [0, 1]},
                                    "gpu_probe": {"enabled": False}}, sort_keys=False))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = _tree(runs_dir(), data_dir(), cwd, spec.parent)
    code, output = invoke("study", "run", str(spec), "--dry-run", "--json", "--workers", "2")
    assert code == 0, output
    cost = json.loads(output)
    assert _tree(runs_dir(), data_dir(), cwd, spec.parent) == before  # no study, run, store or dataset folder
    assert [(t["axes"]["train.steps"], t["axes"]["seed"], t["steps"]) for t in cost["trials"]] == \
        [(2, 0, 2), (2, 1, 2), (3, 0, 3), (3, 1, 3)]
    assert cost["probes"] == 1 and cost["workers"] == 2  # one distinct model, step and data shape
    assert all(t["step_seconds"] > 0 and t["flops_per_step"] > 0 for t in cost["trials"])
    assert cost["wall_seconds"] == max(sum(t["train_seconds"] for t in cost["trials"][i::2]) for i in (0, 1))
    _print_dry_run(cost, as_json=False)
    assert "t003-steps=3-seed=1" in capsys.readouterr().out

    trial = expand_grid(*load_study(spec))[2]  # steps 3: what the training loop counts over a real run of it
    cfg, device = trial.config, torch.device("cpu")
    recipe = family_of(cfg).recipe(cfg, family_of(cfg).load_data(cfg, None), device, resume=False, world=SINGLE)
    counters = fit(cfg, tmp_path / "real", recipe, None, device)
    assert cfg.train.steps == 3 and cost["trials"][2]["flops"] == counters["flops"] > 0
