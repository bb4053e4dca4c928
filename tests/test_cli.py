"""The command line end to end, in process (Typer's runner) and, for error output, as a real process."""

import json
import os
import shutil
import subprocess
import sys

import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_config, tree_hashes
from genscale.cli import app
from genscale.errors import GenscaleError
from genscale.paths import runs_dir
from genscale.tracking import resolve_run_dir, tracking_uri

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_train_eval_sample_runs(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    config = user / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    before = tree_hashes(user)

    code, output = invoke("train", str(config), "--set", "train.steps=6", "--set", "gate.fid_fmnist.max=1e9")
    assert code == 0, output
    run_dir = resolve_run_dir("latest")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"fid_fmnist", "kid_fmnist", "is_fmnist", "extractor_test_accuracy"}
    assert metrics["fid_fmnist"]["n_gen"] == 200 and metrics["fid_fmnist"]["extractor"].startswith("fmnist-classifier")
    assert json.loads((run_dir / "gate.json").read_text())["verdict"] == "PASS"
    assert tree_hashes(user) == before  # the user's config is only read

    client = MlflowClient(tracking_uri())
    run = client.get_run(run_dir.name)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "6" and run.data.tags["gate"] == "PASS"
    assert run.data.metrics["flops"] > 0 and "fid_fmnist" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "loss_d")) == 2  # logged at steps 3 and 6
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "samples.png", "checkpoint"} <= artifacts

    code, output = invoke("eval", run_dir.name[:8], "--n", "100")
    assert code == 0, output
    assert "fid_fmnist" in output and "100 generated" in output

    code, output = invoke("sample", "latest", "-n", "9", "-o", str(tmp_path / "grid.png"))
    assert code == 0, output
    assert Image.open(tmp_path / "grid.png").size == (3 * 30 + 2, 3 * 30 + 2)

    code, output = invoke("runs")
    assert code == 0 and run_dir.name[:8] in output and "PASS" in output


def test_gate_failure_is_reported_not_raised(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    code, output = invoke("train", str(config), "--set", "train.steps=3", "--set", "gate.fid_fmnist.max=0.001")
    assert code == 0
    assert "FAIL" in output and "violates <= 0.001" in output


def genscale(*args, cwd):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "genscale.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, stdin=subprocess.DEVNULL)


def test_bad_input_gives_one_error_line_and_nonzero_exit(tmp_path, monkeypatch):
    (tmp_path / "typo.yaml").write_text("model:\n  arch: dcgan\ntrian:\n  steps: 5\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "imgs.yaml").write_text(f"data:\n  source: imagefolder\n  path: {tmp_path / 'empty'}\n")
    (tmp_path / "images.idx").write_bytes(b"\x00\x00\x07\x03" + bytes(12))
    (tmp_path / "idx.yaml").write_text(f"data:\n  source: idx\n  path: {tmp_path / 'images.idx'}\n")
    (tmp_path / "broken").mkdir()
    Image.new("L", (64, 64), 128).save(tmp_path / "broken" / "a.png")
    (tmp_path / "broken" / "b.png").write_bytes((tmp_path / "broken" / "a.png").read_bytes()[:40])
    (tmp_path / "broken.yaml").write_text(f"data:\n  source: imagefolder\n  path: {tmp_path / 'broken'}\n")
    before = tree_hashes(tmp_path)
    cases = [
        (["train", "typo.yaml"], "typo.yaml: unknown key 'trian'"),
        (["train", "imgs.yaml"], "empty: no .png/.jpg/.jpeg/.bmp/.webp images found"),
        (["train", "idx.yaml"], "images.idx: not an IDX file (magic bytes 00000703)"),
        (["train", "broken.yaml"], "b.png: cannot decode image"),
        (["eval", "nosuchrun"], "run 'nosuchrun': no such run"),
        (["data", "fetch", "mnist"], "unknown name 'mnist'"),
    ]
    (args, message), *rest = cases
    done = genscale(*args, cwd=tmp_path)  # one as a real process: exactly one line on its stderr
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, (args, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, done.stderr)
    monkeypatch.chdir(tmp_path)
    for args, message in rest:  # the same error boundary, in process
        assert message in one_error_line(args), args
    assert tree_hashes(tmp_path) == before  # no run folder was made, no user file was touched


def test_data_info_describes_the_builtin_set():
    code, output = invoke("data", "info", "fashion-mnist")
    info = json.loads(output)
    assert code == 0 and info["train"] == 55000 and info["test"] == 10000 and info["classes"] == 10


def one_error_line(args: list[str]) -> str:
    """Runs the CLI in process; asserts exit status 1 and a single `error:` line without a traceback."""
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 1, (args, result.output, result.exception)
    assert lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[-1]


def test_user_errors_are_one_line_each(tmp_path):
    """Each of these printed a traceback before (sample /etc, eval /nonexistent, a malformed run config.yaml, a
    checkpoint of another size, a non-JSON metrics.json, sample -o DIR / -o x.txt, eval --n 1, a YAML tag)
    or passed silently (eval --n 0, a globbed prefix)."""
    from genscale.pipeline import train

    run_dir = train(tiny_config(train__steps=4, eval__on_train_end=False))

    def broken_copy(name: str, edit) -> str:
        copy = tmp_path / name
        shutil.copytree(run_dir, copy)
        edit(copy)
        return str(copy)

    def other_size(folder):
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        cfg["model"]["size"] = "small"
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))

    malformed = broken_copy("malformed", lambda f: (f / "config.yaml").write_text("model: [gan\n"))
    tagged = broken_copy("tagged", lambda f: (f / "config.yaml").write_text("!!python/object/apply:os.system [ls]\n"))
    resized = broken_copy("resized", other_size)
    bad_metrics = broken_copy("bad-metrics", lambda f: (f / "metrics.json").write_text("{not json"))
    cases = [
        (["sample", "/etc", "-n", "4", "-o", str(tmp_path / "x.png")], "/etc: not a run folder (no config.yaml)"),
        (["eval", "/nonexistent/run"], "/nonexistent/run: not a run folder"),
        (["eval", malformed], "config.yaml: invalid YAML at line 2"),
        (["eval", tagged], "config.yaml: invalid YAML at line 1"),
        (["eval", resized, "--n", "100"], "the checkpoint does not fit the network of the run's config"),
        (["eval", bad_metrics, "--n", "100"], "metrics.json: metrics file is not valid JSON"),
        (["sample", run_dir.name, "-o", str(tmp_path)], "is a folder; give a file name for the image grid"),
        (["sample", run_dir.name, "-o", str(tmp_path / "x.txt")], "needs a file name ending in .png"),
        (["eval", run_dir.name, "--n", "1"], "--n 1: key 'eval.n_samples': Input should be greater than or equal to 2"),
        (["eval", run_dir.name, "--n", "0"], "--n 0: key 'eval.n_samples'"),
        (["eval", "*"], "run '*': not a run id, prefix or folder"),
        (["eval", ".."], "..: not a run folder"),
        (["train", str(tmp_path / "x.yaml"), "--set", "train.steps=true"], "expected a number, got the boolean"),
    ]
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    for args, message in cases:
        assert message in one_error_line(args), args
    assert not (tmp_path / "x.png").exists()


def test_a_bug_keeps_its_traceback_and_debug_shows_every_one(monkeypatch):
    import genscale.pipeline

    def buggy(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(genscale.pipeline, "evaluate_run", buggy)
    monkeypatch.setenv("GENSCALE_DEBUG", "")  # restored (unset) after the test, whatever --debug sets
    result = CliRunner().invoke(app, ["eval", "latest"])
    assert isinstance(result.exception, ZeroDivisionError)  # not turned into an error line
    assert isinstance(CliRunner().invoke(app, ["--debug", "sample", "nosuchrun"]).exception, GenscaleError)
    monkeypatch.setenv("GENSCALE_DEBUG", "")
    assert one_error_line(["sample", "nosuchrun"]) == f"error: run 'nosuchrun': no such run in {runs_dir()}"


def test_settings_lists_a_familys_keys_with_their_documentation():
    result = CliRunner().invoke(app, ["settings", "vae"])
    assert result.exit_code == 0, result.output
    assert "eval.iwae_k" in result.output and "importance samples" in result.output
    assert "train.lr_g" not in result.output  # a gan setting
    assert "gate.METRIC" in result.output and "nelbo" in result.output
    bad = CliRunner().invoke(app, ["settings", "diffusion"])
    assert bad.exit_code == 1 and "unknown family 'diffusion'" in bad.output
