"""The model registry (MLflow's, in the run's tracking store): register, read back from tags, aliases, resolve,
refusals, gate.register after training and evaluation, and the `genscale models` commands.

One store for the module: a new SQLite store costs seconds to migrate, so the two trained runs (one that passes its
gate, one that fails it, both with gate.register) and every test share it, each test with its own model names."""

import json
import shutil

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from conftest import module_store, tiny_config
from genscale.cli import app
from genscale.config import RunConfig, config_from_dict, load_config
from genscale.errors import GenscaleError
from genscale.gate import GateResult
from genscale.pipeline import load_run, register_if_passed, tracked_run_id, train
from genscale.registry import model_versions, promote, register, register_run, registered_models, resolve
from genscale.sections import GateConfig
from genscale.tracking import tracking_uri

AUTO = "auto-gan"  # the gate.register name of both trained runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(a run that passed its gate, one that failed it), trained in this module's own store."""
    root = tmp_path_factory.mktemp("registry")
    with module_store(root):
        passed = train(tiny_config(train__steps=2, gate__register=AUTO))
        failed = train(tiny_config(train__steps=2, gate__register=AUTO, gate__fid_fmnist={"max": 0.001}))
    return root / "runs", passed, failed


@pytest.fixture(autouse=True)
def _module_store(trained, _isolated_runs, monkeypatch):
    """Every test in this module on the store the runs were trained in (conftest gives each test a new one)."""
    monkeypatch.setenv("GENSCALE_RUNS", str(trained[0]))


def test_gate_register_registers_a_run_that_passes_and_not_one_that_fails(trained):
    _, passed, failed = trained
    assert json.loads((failed / "gate.json").read_text())["verdict"] == "FAIL"
    versions = model_versions(AUTO)
    assert [(v.version, v.run_id) for v in versions] == [(1, tracked_run_id(passed))]
    assert versions[0].gate == json.loads((passed / "gate.json").read_text())


def test_a_version_is_read_back_from_its_tags(trained):
    _, passed, _ = trained
    v = register(passed.name, "tiny-gan")
    records = json.loads((passed / "metrics.json").read_text())
    summary = json.loads((passed / "summary.json").read_text())
    assert (v.name, v.version, v.aliases, v.run_id, v.run_dir, v.step) == (
        "tiny-gan", 1, (), passed.name, passed, 2)
    assert (v.family, v.kind, v.dataset, v.dataset_version) == ("gan", "image", "fashion-mnist",
                                                                summary["dataset_version"])
    assert v.metrics == {k: {"value": r["value"], "extractor": r["extractor"]} for k, r in records.items()
                         if "n_gen" in r}  # the metrics, not the facts beside them (sampling time)
    assert set(v.metrics) == {"fid_fmnist", "kid_fmnist", "is_fmnist", "precision_fmnist", "recall_fmnist"}
    fid = records["fid_fmnist"]["value"]
    assert v.gate == {"verdict": "PASS", "reasons": [f"fid_fmnist = {fid:.4g} meets <= 1e+06"]}
    assert v.config == (passed / "config.yaml").read_text()
    assert v.source == f"runs:/{v.run_id}/export-torch/step_0000002"  # the export, not the training checkpoint
    logged = {f.path for f in MlflowClient(tracking_uri()).list_artifacts(v.run_id, "export-torch/step_0000002")}
    assert {f"export-torch/step_0000002/{f}" for f in ("generator.pt2", "generator.safetensors", "export.json",
                                                      "README.md")} <= logged
    tags = MlflowClient(tracking_uri()).get_model_version("tiny-gan", "1").tags  # what it was read from
    assert tags["family"] == "gan" and tags["metric.fid_fmnist"] == repr(records["fid_fmnist"]["value"])
    assert tags["metric.fid_fmnist.extractor"].startswith("fmnist-classifier:")
    assert json.loads(json.dumps(v.as_dict()))["run_dir"] == str(passed)


def test_versions_aliases_and_what_a_spec_resolves_to(trained):
    _, passed, _ = trained
    assert register(passed.name, "lineup").version == 1
    second = register(str(passed), "lineup", alias="candidate")
    assert (second.version, second.aliases) == (2, ("candidate",))
    assert resolve("lineup").version == 2  # no champion: the latest
    assert promote("lineup", 1).aliases == ("champion",)
    assert (resolve("lineup").version, resolve("lineup@champion").version, resolve("lineup/2").version) == (1, 1, 2)
    assert resolve("lineup@candidate").aliases == ("candidate",)
    assert promote("lineup", 2).version == 2 and resolve("lineup").aliases == ("candidate", "champion")
    assert resolve("lineup/1").aliases == ()  # the alias moved
    assert [(v.version, v.aliases) for v in model_versions("lineup")] == [(1, ()), (2, ("candidate", "champion"))]
    shown = {v.name: v.version for v in registered_models()}
    assert shown["lineup"] == 2 and shown[AUTO] == 1


def test_refusals_are_one_clear_error_each(trained, tmp_path):
    _, passed, failed = trained
    with pytest.raises(GenscaleError, match=r"run .* failed its gate, not registered: fid_fmnist = .* violates "
                                            r"<= 0\.001"):
        register(str(failed), "refused")
    for bad in ("../x", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(GenscaleError, match=rf"--name {bad!r}: a model name is 1 to 64 letters"):
            register(str(passed), bad)
    with pytest.raises(GenscaleError, match=r"--alias 'v1': an alias is"):
        register(str(passed), "refused", alias="v1")

    def copy(name: str, drop: str | None = None):
        folder = tmp_path / name
        shutil.copytree(passed, folder, ignore=shutil.ignore_patterns(drop) if drop else None)
        return folder

    unevaluated = copy("unevaluated", "gate.json")
    with pytest.raises(GenscaleError, match=rf"run {unevaluated} has not been evaluated: genscale eval {unevaluated}"):
        register(str(unevaluated), "refused")
    with pytest.raises(GenscaleError, match=r"has no checkpoint in .*checkpoints"):
        register(str(copy("no-checkpoint", "checkpoints")), "refused")
    elsewhere = copy("elsewhere", "checkpoints")
    shutil.copytree(passed / "checkpoints", elsewhere / "checkpoints")
    (elsewhere / "tracking.json").write_text(json.dumps({"run_id": "0" * 32}))
    with pytest.raises(GenscaleError, match=rf"\(MLflow run {'0' * 32}\) is not in the tracking store"):
        register(str(elsewhere), "refused")
    MlflowClient(tracking_uri()).create_registered_model("texts", tags={"kind": "text"})
    with pytest.raises(GenscaleError, match=r"model texts holds text models; run .* is a gan run, of kind image"):
        register(str(passed), "texts")
    assert "refused" not in {v.name for v in registered_models()}

    with pytest.raises(GenscaleError, match=r"no registered model 'nope' in .* \(registered: .*auto-gan"):
        resolve("nope")
    with pytest.raises(GenscaleError, match=r"no registered model 'nope'"):
        model_versions("nope")
    with pytest.raises(GenscaleError, match=rf"model {AUTO} has no alias 'gold' \(its aliases: none\)"):
        resolve(f"{AUTO}@gold")
    with pytest.raises(GenscaleError, match=rf"model {AUTO} has no version 7 \(its versions: 1\)"):
        resolve(f"{AUTO}/7")
    with pytest.raises(GenscaleError, match=rf"model {AUTO} has no version 7"):
        promote(AUTO, 7)
    with pytest.raises(GenscaleError, match=rf"model '{AUTO}/x': 'x' is not a version number"):
        resolve(f"{AUTO}/x")


def test_a_gate_without_thresholds_passes_with_a_note(trained, capsys):
    _, passed, _ = trained
    run_dir, cfg = load_run(str(passed))
    v = register_run(run_dir, cfg.model_copy(update={"gate": GateConfig()}), "vacuous")
    assert v.version == 1 and "gate has no thresholds: it passes vacuously" in capsys.readouterr().err


def test_gate_register_says_why_a_run_is_not_registered(trained, capsys):
    _, _, failed = trained
    run_dir, cfg = load_run(str(failed))
    cfg = cfg.model_copy(update={"gate": GateConfig(register="never")})
    register_if_passed(cfg, run_dir, GateResult(False, ("fid_fmnist = 700 violates <= 0.001",)), uri=None)
    register_if_passed(cfg, run_dir, None, uri=None)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "not registered as never: gate FAIL"
    assert err[1].startswith("not registered as never: not evaluated (eval.on_train_end is false)")
    assert "never" not in {v.name for v in registered_models()}


def test_gate_register_is_a_config_key_that_round_trips(tmp_path):
    cfg = tiny_config(gate__register="fmnist-dcgan")
    assert (cfg.gate.register, cfg.gate.thresholds["fid_fmnist"].max) == ("fmnist-dcgan", 1e6)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    assert load_config(path) == cfg
    assert RunConfig().gate.register is None and RunConfig().gate.thresholds == {}
    with pytest.raises(GenscaleError, match=r"key 'gate\.register': .*a model name is .*\(got '\.\./x'\)"):
        config_from_dict({"gate": {"register": "../x"}})
    with pytest.raises(GenscaleError, match=r"key 'gate\.fid_fmnist': needs 'max', 'min' or 'max_over_floor'"):
        config_from_dict({"gate": {"register": "ok", "fid_fmnist": {}}})


def test_models_commands(trained):
    _, passed, _ = trained
    runner = CliRunner()
    done = runner.invoke(app, ["models", "register", passed.name[:8], "--name", "cli-gan", "--alias", "champion"])
    assert done.exit_code == 0 and "registered cli-gan version 1 @champion" in done.output, done.output
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).output)
    assert {"name": "cli-gan", "version": 1, "aliases": ["champion"]}.items() <= \
        next(v for v in listed if v["name"] == "cli-gan").items()
    shown = json.loads(runner.invoke(app, ["models", "show", "cli-gan@champion", "--json"]).output)
    assert shown["gate"]["verdict"] == "PASS" and [w["version"] for w in shown["versions"]] == [1]
    table = runner.invoke(app, ["models", "show", "cli-gan"])
    assert table.exit_code == 0 and "fid_fmnist = " in table.output and "meets <= 1e+06" in table.output
    done = runner.invoke(app, ["models", "promote", "cli-gan", "1", "--alias", "prod"])
    assert done.exit_code == 0 and "cli-gan@prod is version 1" in done.output
    for args, message in [(["models", "register", passed.name, "--name", "a/b"], "--name 'a/b': a model name"),
                          (["models", "show", "cli-gan/3"], "model cli-gan has no version 3 (its versions: 1)"),
                          (["models", "promote", "nope", "1"], "no registered model 'nope'")]:
        result = runner.invoke(app, args)
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert message in lines[0] and "Traceback" not in result.output
