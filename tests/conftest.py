"""Test fixtures. Runs and the MLflow store go to a temporary folder; datasets and weights come from
the shared cache that `make setup` filled (GENSCALE_CACHE), so no test downloads anything."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from genscale.config import RunConfig

# The longest files first: `make test` runs files on two processes (pytest-xdist --dist loadfile), and a long file
# handed out last would run alone at the end.
LONGEST_FIRST = ("test_study_resume.py", "test_study.py", "test_faults.py", "test_ddp.py", "test_serve.py",
                 "test_tune_processes.py", "test_tune.py", "test_scripting.py", "test_export.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSCALE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("GENSCALE_DATA", str(tmp_path / "datasets"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def tiny_config(**overrides) -> RunConfig:
    """A gan-mlp on 256 Fashion-MNIST images: seconds on a CPU."""
    raw = {
        "name": "tiny",
        "data": {"source": "fashion-mnist", "size": 256},
        "model": {"arch": "gan-mlp", "size": "tiny"},
        "train": {"steps": 12, "batch_size": 32, "checkpoint_every": 4, "log_every": 3, "device": "cpu"},
        "eval": {"n_samples": 200, "kid_subsets": 5, "kid_subset_size": 100,
                 "classifier": {"epochs": 1, "train_size": 2000}},
        "gate": {"fid_fmnist": {"max": 1.0e6}},
    }
    for key, value in overrides.items():
        section, field = key.split("__")
        raw[section][field] = value
    return RunConfig.model_validate(raw)


def gpt_config(corpus, **overrides) -> RunConfig:
    """A 2-layer, 32-wide GPT on the corpus: a run takes about a second on a CPU."""
    raw = {
        "name": "tiny-gpt",
        "data": {"source": "text", "path": str(corpus), "tokenizer": "char", "val_fraction": 0.2},
        "model": {"family": "gpt", "size": "tiny", "block_size": 32},
        "train": {"steps": 60, "batch_size": 8, "lr": 1e-2, "warmup_steps": 5, "checkpoint_every": 10,
                  "log_every": 5, "device": "cpu"},
        "eval": {"val_tokens": 2000, "prompts": 4, "prompt_tokens": 16, "continuation_tokens": 16,
                 "diversity_samples": 4, "sample_tokens": 24, "batch_size": 16},
        "gate": {"val_loss": {"max": 2.5}},
    }
    for key, value in overrides.items():
        section, field = key.split("__")
        raw[section][field] = value
    return RunConfig.model_validate(raw)


@contextlib.contextmanager
def module_store(root: Path) -> Iterator[None]:
    """Runs, datasets and the MLflow store under `root` while inside: a module fixture that trains its runs once
    (the autouse fixture above isolates each test, which a module-scoped fixture runs before)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GENSCALE_RUNS", str(root / "runs"))
        env.setenv("GENSCALE_DATA", str(root / "datasets"))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
