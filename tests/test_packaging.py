"""What an installed genscale needs beyond the code: shipped presets by name, its version, `python -m genscale`, and
one error line (not a traceback) where the optional study stack is missing."""

import importlib.metadata
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from genscale.cli import app
from genscale.config import PRESETS, load_config, resolve_preset
from genscale.errors import GenscaleError
from genscale.study.spec import load_study


def test_a_preset_resolves_by_name_and_an_existing_file_wins(tmp_path, monkeypatch):
    shipped = yaml.safe_load((PRESETS / "dcgan-fmnist.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    by_name = load_config("dcgan-fmnist")
    assert by_name.model.arch == shipped["model"]["arch"] and by_name.train.steps == shipped["train"]["steps"]
    assert load_config("dcgan-fmnist.yaml", ["train.steps=7"]).train.steps == 7
    (tmp_path / "dcgan-fmnist.yaml").write_text("name: mine\ntrain: {steps: 3}\n")  # the user's own file of that name
    mine = load_config("dcgan-fmnist.yaml")
    assert mine.name == "mine" and mine.train.steps == 3
    # a user's study starts from a preset by name; a base beside the study file wins over the preset
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.yaml").write_text("base: vae-fmnist\naxes: {data.size: [64, 128]}\n")
    assert load_study(tmp_path / "s" / "study.yaml")[1]["model"] == yaml.safe_load(
        (PRESETS / "vae-fmnist.yaml").read_text())["model"]
    (tmp_path / "s" / "vae-fmnist").write_text("model: {family: vae, size: tiny}\n")
    assert load_study(tmp_path / "s" / "study.yaml")[1]["model"] == {"family": "vae", "size": "tiny"}


def test_an_unknown_name_is_one_error_line_listing_the_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "dcgan-mnist"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: dcgan-mnist: no such file")
    shipped = {p.stem for p in PRESETS.glob("*.yaml")}
    assert {"dcgan-fmnist", "gpt-char-shakespeare", "study-demo-image"} <= shipped
    listed = set(lines[0].split("(presets: ")[1].rstrip(")").split(", "))
    assert listed == {s for s in shipped if not s.startswith("study-")}  # a run config lists run configs only
    with pytest.raises(GenscaleError, match="nor a shipped study preset .*study-demo-image"):
        resolve_preset("dcgan-fmnist", "study")  # a run-config preset is not a study
    with pytest.raises(GenscaleError, match="no such file"):
        resolve_preset("elsewhere/dcgan-fmnist.yaml")  # a path with a folder is a path, never a preset


def test_version_is_the_installed_distributions():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"genscale {importlib.metadata.version('genscale')}\n"


def test_python_dash_m_genscale_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "genscale", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"genscale {importlib.metadata.version('genscale')}\n", done.stderr


def test_a_study_without_ray_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    for args in (["study", "run", "study-demo-image"], ["study", "resume", str(tmp_path)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.strip().splitlines() == ["error: study runs need Ray: pip install 'genscale[study]'"]
    assert not (tmp_path / "runs").exists()  # nothing was planned or tracked


@pytest.mark.parametrize(("words", "expected"), [
    ("genscale train dcg", ["dcgan-fmnist", "dcgan-wgan-gp-fmnist"]),
    ("genscale config show gpt-c", ["gpt-char-shakespeare"]),
    ("genscale study run study-demo-i", ["study-demo-image"]),  # a study completes to studies only
    ("genscale study run dcg", []),
    ("genscale train ./my", [])])  # a path: nothing, so the shell completes files (bash `complete -o default`)
def test_shell_completion_offers_the_shipped_presets_by_name(words, expected):
    env = {"_GENSCALE_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
    result = CliRunner().invoke(app, [], env=env, prog_name="genscale")
    assert result.output.split() == expected, result.output
