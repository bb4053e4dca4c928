"""eval.every: a metric curve during training, the best checkpoint kept, and its full-budget metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_gpt_train import write_corpus
from test_train import interrupt_at_call

import genscale.pipeline as pipeline
from conftest import gpt_config, tiny_config
from genscale.metrics.evaluate import extract, generate_images, make_extractor, reference_features
from genscale.metrics.image import feature_moments, fid_from_moments
from genscale.metrics.text import sequence_nll
from genscale.pipeline import load_data, load_sampler, train
from genscale.tracking import resolve_run_dir


def ema_weights(path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(path).items() if k.startswith("ema.")}


def scripted_scores(monkeypatch, values: list[float]) -> list[int]:
    """Replace the cheap metric by a scripted sequence; returns the list the calls' count goes into."""
    original = pipeline.periodic_evaluation
    calls: list[int] = []

    def scripted(cfg, data, recipe, device):
        evaluation = original(cfg, data, recipe, device)
        evaluation.score = lambda: (calls.append(1), values[len(calls) - 1])[1]
        return evaluation

    monkeypatch.setattr(pipeline, "periodic_evaluation", scripted)
    return calls


def test_best_checkpoint_holds_the_weights_of_the_best_step(monkeypatch):
    # scores 3, 1, 2 at steps 4, 8, 12: the best is step 8, whose weights an 8-step run ends with
    calls = scripted_scores(monkeypatch, [3.0, 1.0, 2.0])
    run_dir = train(tiny_config(eval__every=4, eval__on_train_end=False))
    assert len(calls) == 3
    curve = json.loads((run_dir / "curve.json").read_text())
    assert curve["metric"] == "fid_fmnist" and curve["points"] == [[4, 3.0], [8, 1.0], [12, 2.0]]
    assert "validation images" in curve["budget"]
    best = json.loads((run_dir / "best.json").read_text())
    assert (best["step"], best["value"]) == (8, 1.0)
    monkeypatch.undo()
    short = train(tiny_config(eval__on_train_end=False, train__steps=8))
    kept, reference = ema_weights(run_dir / "best" / "step_0000008.safetensors"), \
        ema_weights(short / "checkpoints" / "step_0000008.safetensors")
    final = ema_weights(run_dir / "checkpoints" / "step_0000012.safetensors")
    assert kept.keys() == reference.keys()
    assert all(torch.equal(kept[k], reference[k]) for k in kept)
    assert any(not torch.equal(kept[k], final[k]) for k in kept)


def test_curve_scores_the_ema_generator_on_the_validation_split_and_best_gets_full_metrics():
    cfg = tiny_config(eval__every=6, eval__every_n_samples=100)
    run_dir = train(cfg)
    curve = json.loads((run_dir / "curve.json").read_text())
    assert [s for s, _ in curve["points"]] == [6, 12]
    best = json.loads((run_dir / "best.json").read_text())
    # recompute the best point from its kept checkpoint, independently of the curve's code path
    data = load_data(cfg)
    device = torch.device("cpu")
    sampler, step = load_sampler(run_dir, cfg, device, folder="best", step=best["step"])
    g = sampler.g
    extractor = make_extractor(data, cfg.eval, device)
    images = generate_images(g, 100, z_dim=cfg.model.z_dim, seed=cfg.train.seed + 2, device=device)
    ref = reference_features(extractor, data, 100, cfg.eval.batch_size, split="val")
    assert ref.shape[0] == 100 and not np.array_equal(ref, reference_features(extractor, data, 100, 250))
    fid = fid_from_moments(*feature_moments(extract(extractor, images, 250, "x")[0]), *feature_moments(ref))
    assert step == best["step"] and best["value"] == pytest.approx(fid, rel=1e-9)
    assert best["value"] == min(v for _, v in curve["points"])
    final = {k: v["value"] for k, v in json.loads((run_dir / "metrics.json").read_text()).items()}
    assert set(best["metrics"]) == {"fid_fmnist", "kid_fmnist", "is_fmnist", "precision_fmnist", "recall_fmnist"}
    if best["step"] == cfg.train.steps:
        assert best["metrics"]["fid_fmnist"] == final["fid_fmnist"]
    else:  # scored at the final budget (200 samples vs the test split), not the curve's
        assert best["metrics"]["fid_fmnist"] != final["fid_fmnist"]


def test_interrupted_run_resumes_its_curve_and_best(monkeypatch):
    cfg = tiny_config(eval__every=2, eval__every_n_samples=64, eval__on_train_end=False)
    reference = train(cfg)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        interrupt_at_call(m, 7)  # after the step-4 checkpoint and the step-6 score, before the step-8 checkpoint
        train(cfg)
    run_dir = resolve_run_dir("latest")
    assert [s for s, _ in json.loads((run_dir / "curve.json").read_text())["points"]] == [2, 4, 6]
    resumed = train(resume=run_dir.name)
    ref_curve = json.loads((reference / "curve.json").read_text())["points"]
    got_curve = json.loads((resumed / "curve.json").read_text())["points"]
    assert [s for s, _ in got_curve] == [s for s, _ in ref_curve]
    np.testing.assert_allclose([v for _, v in got_curve], [v for _, v in ref_curve], rtol=1e-6)
    ref_best, got_best = (json.loads((d / "best.json").read_text()) for d in (reference, resumed))
    assert got_best["step"] == ref_best["step"]


def test_gpt_curve_is_the_held_out_loss_of_the_kept_checkpoint(tmp_path):
    cfg = gpt_config(write_corpus(tmp_path / "corpus"), eval__every=20, eval__every_val_tokens=500,
                     eval__on_train_end=False)
    run_dir = train(cfg)
    curve = json.loads((run_dir / "curve.json").read_text())
    assert curve["metric"] == "val_loss" and [s for s, _ in curve["points"]] == [20, 40, 60]
    best = json.loads((run_dir / "best.json").read_text())
    sampler, step = load_sampler(run_dir, cfg, torch.device("cpu"), folder="best", step=best["step"])
    model = sampler.model
    data = load_data(cfg, run_dir)
    nll, n, _ = sequence_nll(model, data.val, block_size=32, max_tokens=500, batch_size=7, device=torch.device("cpu"))
    assert n == 500 and best["value"] == pytest.approx(nll / n, rel=1e-9)
    assert best["value"] == min(v for _, v in curve["points"])


def test_eval_every_needs_a_validation_split(tmp_path):
    cfg = tiny_config(eval__every=4, data__val_size=0)
    with pytest.raises(pipeline.GenscaleError, match="eval.every: dataset .* has 0 validation images"):
        train(cfg)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*/config.yaml"))
