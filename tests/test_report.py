"""The study report: readable log axes, labels from the model family, text samples, the decision map, and the
verdict-first layout, on synthetic studies whose trials 'finished' with metrics drawn from a known law."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from test_study import _synthetic_study  # noqa: E402

from genscale.study.execute import load_results, read_plan  # noqa: E402
from genscale.study.report import compact_number, family_labels, log_axis, log_ticks, write_report  # noqa: E402

CROSSING = {"E": 2.0, "A[C]": 30 * 1e11**0.3, "alpha[C]": 0.3, "A[D]": 1000.0, "alpha[D]": 0.5}


def crossing_law(c, d):
    """2x data wins at small D and low C, 2x compute at large D: the decision map has both regions on the grid."""
    p = CROSSING
    return p["E"] + p["A[C]"] / c ** p["alpha[C]"] + p["A[D]"] / d ** p["alpha[D]"]


SAMPLE = "--- sample 1\nTo be <b>or</b> not & ```code``` " + "la " * 200 + "END-OF-SAMPLE\n"


# --- log axes ----------------------------------------------------------------------------------------------------

def _visible_labels(fig, axis) -> list:
    """Labels of major and minor ticks inside the view, as drawn."""
    fig.canvas.draw()
    lo, hi = sorted(axis.get_view_interval())
    return [label for locs, labels in ((axis.get_majorticklocs(), axis.get_majorticklabels()),
                                       (axis.get_minorticklocs(), axis.get_minorticklabels()))
            for loc, label in zip(locs, labels, strict=True) if lo <= loc <= hi and label.get_visible()
            and label.get_text()]


@pytest.mark.parametrize("which", ["x", "y"])
@pytest.mark.parametrize("lo, hi, kind", [
    (2e11, 2e11 * 10**1.5, "sci"),  # 1.5 decades of FLOPs; matplotlib's default labels 9 ticks, overlapping
    (1.2e4, 2.4e4, "count"),  # 0.3 decades of examples; the default labels minor ticks "1.4×10⁴", overlapping
    (1e5, 1e11, "count"),  # 6 decades
])
def test_log_axis_labels_are_few_unique_and_do_not_overlap(lo, hi, kind, which):
    fig, ax = plt.subplots(figsize=(6, 4))
    values = np.geomspace(lo, hi, 10)
    ax.plot(*((values, np.arange(10)) if which == "x" else (np.arange(10), values)))
    log_axis(ax, which, kind=kind, label="D")
    fig.tight_layout()
    labels = _visible_labels(fig, ax.xaxis if which == "x" else ax.yaxis)
    texts = [label.get_text() for label in labels]
    renderer = fig.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels]
    plt.close(fig)
    assert 2 <= len(texts) <= 7 and all(t.strip() for t in texts), texts
    assert len(set(texts)) == len(texts), texts
    assert not [(texts[i], texts[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
                if boxes[i].overlaps(boxes[j])]


def test_log_ticks_are_round_and_labelled_compactly():
    def labels(lo, hi, kind):
        return [compact_number(t, kind) for t in log_ticks(lo, hi)]

    assert labels(1e11, 10**12.5, "sci") == ["1e11", "2e11", "5e11", "1e12", "2e12"]
    assert labels(500, 32000, "count") == ["500", "1k", "2k", "5k", "10k", "20k"]
    assert labels(1e3, 3e5, "count") == ["1k", "3k", "10k", "30k", "100k", "300k"]
    assert labels(1.2e4, 2.4e4, "count") == ["12.5k", "15k", "17.5k", "20k", "22.5k"]  # under a decade: even steps
    assert labels(1e5, 1e11, "count") == ["100k", "10M", "1B", "100B"]  # every other decade
    assert labels(1.5, 4, "value") == ["1.5", "2", "2.5", "3", "3.5", "4"]
    assert [compact_number(x, "count") for x in (16000, 1.5e6, 7e9, 999)] == ["16k", "1.5M", "7B", "999"]
    assert [compact_number(x) for x in (0.05, 153.2, 2e6)] == ["0.05", "153.2", "2e6"]


# --- synthetic studies ---------------------------------------------------------------------------------------------

# --- synthetic studies ---------------------------------------------------------------------------------------------
# Real study folders (plan, trials, result.json) whose trials 'finished' with metrics from crossing_law, and an
# analysis dict shaped as `analyse` writes it but holding the known law: fitting takes tens of seconds, and
# test_study.py runs the real analysis into a report end to end.

def gan_like_study(folder: Path, law=crossing_law) -> Path:
    """A synthetic study whose results carry params_g / params_d (gan trials), one with a sample grid."""
    study_dir = _synthetic_study(folder, law)
    for i, result_path in enumerate(sorted(study_dir.glob("trials/*/result.json"))):
        result = json.loads(result_path.read_text())
        result.update(params_g=600, params_d=400)
        result_path.write_text(json.dumps(result))
        if i == 0:
            plt.imsave(result_path.parent / "samples.png", np.random.default_rng(0).random((32, 32)), cmap="gray")
    _rename(study_dir, "synthetic-gan")
    return study_dir


def gpt_like_study(folder: Path, law=crossing_law) -> Path:
    """A synthetic study whose results carry a tokenizer (gpt trials), val_loss and a samples.txt each."""
    study_dir = _synthetic_study(folder, law)
    for result_path in sorted(study_dir.glob("trials/*/result.json")):
        result = json.loads(result_path.read_text())
        result.update(tokenizer="char", vocab_size=65, metrics={"val_loss": result["metrics"]["fid_fmnist"] / 10})
        result_path.write_text(json.dumps(result))
        (result_path.parent / "samples.txt").write_text(SAMPLE)
    plan = _rename(study_dir, "synthetic-gpt")
    plan["study"]["metric"] = "val_loss"
    (study_dir / "plan.json").write_text(json.dumps(plan))
    return study_dir


def _rename(study_dir: Path, name: str) -> dict:
    plan = json.loads((study_dir / "plan.json").read_text())
    plan["name"] = name
    (study_dir / "plan.json").write_text(json.dumps(plan))
    return plan


def decision_map(law, c: np.ndarray, d: np.ndarray, c0: float, d0: float) -> dict:
    """analysis["decision_map"]: the change from 2x data and from 2x compute of law(c, d) over the grid c x d."""
    cg, dg = np.meshgrid(c, d)  # (len d, len c)
    base = law(cg, dg)
    return {"C": c.tolist(), "D": d.tolist(), "gain_data": (law(cg, 2 * dg) - base).tolist(),
            "gain_compute": (law(2 * cg, dg) - base).tolist(), "C0": c0, "D0": d0}


def known_analysis(study_dir: Path, *, new_keys: bool) -> dict:
    """The analysis of the study with crossing_law as its L(C, D); new_keys: with decision map, validation, price,
    held-out trials and unidentified parameters."""
    plan = read_plan(study_dir)
    done, _ = load_results(study_dir, plan)
    metric = plan["study"]["metric"]
    scale = 0.1 if metric == "val_loss" else 1.0
    c = np.array([r["C"] for r in done], dtype=float)
    d = np.array([r["D"] for r in done], dtype=float)
    c0, d0 = 4e11, 16000.0
    params = {k: v * (scale if k[0] in "EA" else 1) for k, v in CROSSING.items()}
    law = {"form": "power", "inputs": ["C", "D"], "params": params, "not_identified": [],
           "intervals": {k: [0.9 * v, 1.1 * v] for k, v in params.items()}, "r2_log": 0.999, "rmse_log": 0.01,
           "observed_range": {"C": [c.min(), c.max()], "D": [d.min(), d.max()]}}
    analysis = {
        "metric": metric, "trials_used": len(done), "laws": {"L(C, D)": law},
        "skipped": {"L(N, D)": "N takes one value"}, "comparisons": {}, "laws_fitted_at": {}, "failed": [],
        "trials_total": len(plan["trials"]),
        "data_constrained": {"available": False, "reason": "switched off (fit.data_constrained: off)"},
        "compute_optimal": {"available": False, "reason": "L(N, S) not fitted: N takes one value"},
        "verdict": {"decision": "compute", "D0": d0, "C0": c0, "law": "L(C, D)",
                    "surface": {"name": "L(C, D)", "n0": 1000.0, "k": 6.0},
                    "sentence": "VERDICT: At 16,000 unique examples and 4e+11 FLOPs, more compute buys more quality.",
                    "gpus_2x": {"note": "no train.gpus trials were run"}}}
    if new_keys:
        analysis["decision_map"] = decision_map(lambda c, d: scale * crossing_law(c, d),
                                                np.geomspace(c.min(), c.max(), 30),
                                                np.geomspace(d.min(), d.max(), 30), c0, d0)
        analysis["verdict"]["validation"] = {"sentence": "VALIDATION: 1 of 2 held-out trials inside its interval."}
        analysis["verdict"]["price"] = {"sentence": "PRICE: the next 1,000 buys -0.1 as data or -0.2 as compute."}
        analysis["holdout"] = {"sentence": "HOLDOUT: the law predicts the largest trials within 3%.", "trials": [
            {"trial": "t011-size=32000-steps=400", "measured": 3.21, "predicted": 3.3, "interval": [3.1, 3.5],
             "log_error": -0.0277, "inside": True},
            {"trial": "t010-size=32000-steps=200", "measured": 4.0, "predicted": 3.5, "interval": [None, None],
             "log_error": 0.1335, "inside": False}]}
        analysis["verdict"]["verified"] = [{"trial": "v00-verify-data2x", "measured": 2.5, "predicted": 2.6,
                                            "interval": [2.4, 2.8], "log_error": 0.039, "inside": True}]
        law["not_identified"] = ["alpha[C]"]
        law["intervals"]["E"] = None
    return analysis


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, tuple[Path, str, str]]:
    """name -> (study folder, report.html, report.md): "gpt" (every new key), "gan" (none), "gan without L(C, D)"."""
    root = tmp_path_factory.mktemp("studies")
    out = {}
    for name, make, new_keys, drop_surface in (("gpt", gpt_like_study, True, False),
                                               ("gan", gan_like_study, False, False),
                                               ("gan without L(C, D)", gan_like_study, False, True)):
        folder = root / name.replace(" ", "_")
        folder.mkdir()
        study_dir = make(folder)
        analysis = known_analysis(study_dir, new_keys=new_keys)
        if drop_surface:
            del analysis["laws"]["L(C, D)"]
        plan = read_plan(study_dir)
        page = write_report(study_dir, plan, load_results(study_dir, plan)[0], analysis).read_text()
        out[name] = (study_dir, page, (study_dir / "report.md").read_text())
    return out


# --- the report ----------------------------------------------------------------------------------------------------

def test_labels_follow_the_family_of_the_trial_results():
    assert family_labels([{"tokenizer": "char"}])["D"] == "unique training tokens"
    assert family_labels([{"tokenizer": "char"}])["N"] == "parameters N (transformer)"
    assert family_labels([{"params_g": 1, "params_d": 2}])["D"] == "unique training images"
    assert family_labels([{"params_g": 1, "params_d": 2}])["N"] == "parameters N (generator + discriminator)"


def test_gpt_report_says_tokens_and_shows_escaped_text_samples(reports):
    study_dir, page, md = reports["gpt"]
    written = page.split("<h3>Study file")[0]  # not the study file and run config
    assert "D (tokens)" in written and "55000 training tokens" in written and "images" not in written
    assert "<h2>Text samples</h2>" in page and md.count("## Text samples") == 1
    assert page.count("To be &lt;b&gt;or&lt;/b&gt; not &amp;") == 12 and "<b>or</b>" not in page  # escaped
    assert "END-OF-SAMPLE" not in page and "END-OF-SAMPLE" not in md  # the first 300 characters only
    first = json.loads(next(study_dir.glob("trials/t000-*/result.json")).read_text())
    assert f"<h3>{first['trial']} (val_loss = {first['metrics']['val_loss']:.4g})</h3><pre>--- sample 1" in page
    assert "\n````text\n--- sample 1\nTo be <b>or</b>" in md  # a fence longer than the ``` in the sample


def test_gan_report_says_images_keeps_its_sample_grids_and_has_no_decision_map(reports):
    study_dir, page, md = reports["gan"]
    written = page.split("<h3>Study file")[0]  # not the study file and run config
    assert "D (images)" in written and "55000 training images" in written and "tokens" not in written
    assert "<h2>Samples</h2><div class='grids'>" in page and "Text samples" not in page
    grid = next(line for line in md.splitlines() if "samples.png" in line)
    assert (study_dir / grid.split("](")[1].rstrip(")")).exists()
    assert "decision_map.png" not in page and not (study_dir / "report_files" / "decision_map.png").exists()
    assert page.count("data:image/png;base64,") == 5  # 4 plots and the sample grid, inlined


def test_report_with_a_decision_map_has_its_image(reports):
    study_dir, page, md = reports["gpt"]
    assert (study_dir / "report_files" / "decision_map.png").stat().st_size > 10_000
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="decision_map.png">', page)  # inlined
    assert "![where 2x data beats 2x compute, from the fitted law](report_files/decision_map.png)" in md


def test_report_opens_with_the_verdict_then_validation_price_gpus_and_held_out_trials(reports):
    _, page, md = reports["gpt"]
    for text in (page, md):
        order = [text.find(s) for s in ("VERDICT:", "VALIDATION:", "PRICE:", "2× GPUs at equal wall time: no "
                                        "train.gpus trials were run.", "Held-out trials", "HOLDOUT:", "Fits")]
        assert -1 not in order and order == sorted(order), order
        assert text.find("VERDICT:") < text.find("Plots") and text.find("VERDICT:") < text.find("Trials")
    assert "<th>trial</th><th>measured</th><th>predicted</th><th>90% interval</th><th>log error</th><th>inside</th>" \
        in page
    assert "<td>t011-size=32000-steps=400</td><td>3.21</td><td>3.3</td><td>[3.1, 3.5]</td><td>-0.028</td>" \
           "<td>yes</td>" in page
    assert "| t010-size=32000-steps=200 | 4 | 3.5 | not identified | +0.134 | no |" in md
    assert "| v00-verify-data2x (verify run) | 2.5 | 2.6 | [2.4, 2.8] | +0.039 | yes |" in md
    surface = next(line for line in md.split("## Fits")[1].splitlines() if line.startswith("- L(C, D):"))
    assert "alpha[C] not identified" in surface and "E = 0.2 [not identified]" in surface
    assert "A[D] = 100 [90, 110]" in surface


def test_report_without_the_surface_law_is_still_written(reports):
    study_dir, page, md = reports["gan without L(C, D)"]
    assert (study_dir / "report_files" / "metric_vs_data.png").exists() and "VERDICT:" in page
    assert not (study_dir / "report_files" / "surface.png").exists() and "L(C, D):" not in md
