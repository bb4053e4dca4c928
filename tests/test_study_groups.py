"""Studies over several model families (model.family as an axis): each family's trials get their own law, verdict
and held-out check, compared side by side in the report, on synthetic trials whose metric follows a known law per
family (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from genscale.study.analysis import analyse, analyse_study
from genscale.study.fit import fit_power_law
from genscale.study.report import compact_number

METRIC = "fid_fmnist"
FIT_CFG = {"bootstrap": 10, "seed": 0, "level": 0.9, "max_extrapolation": 4.0, "data_constrained": "off"}
BATCH, K = 64, 6.0  # examples per step, FLOPs per parameter per example
SIZES, STEPS = [1000, 4000, 16000, 64000], [250, 1000, 4000, 16000]
# family -> (E, A, alpha, B, beta) of L = E + A / (C / 1e10)^alpha + B / (D / 1e3)^beta
LAWS = {"gan": (20.0, 40.0, 0.3, 30.0, 0.2), "vae": (40.0, 30.0, 0.15, 60.0, 0.5),
        "ddpm": (8.0, 60.0, 0.5, 20.0, 0.35)}
PARAMS = {"gan": 1e5, "vae": 2e5, "ddpm": 4e5}
FAILED = "t-vae-d64000-s16000"  # this grid point of the vae 'diverged'
AXES = {"model.family": list(LAWS), "data.size": SIZES, "train.steps": STEPS}


def law(family: str, c: float, d: float) -> float:
    e, a, alpha, b, beta = LAWS[family]
    return e + a / (c / 1e10) ** alpha + b / (d / 1e3) ** beta


def trial(family: str, d: int, steps: int, rng: np.random.Generator) -> dict:
    """A result.json of a finished trial (as execute_trial writes it), its metric from the family's law."""
    n, s = PARAMS[family], steps * BATCH
    c = K * n * s
    result = {"trial": f"t-{family}-d{d}-s{steps}", "axes": {"model.family": family, "data.size": d,
                                                             "train.steps": steps},
              "role": "grid", "family": family, "D": d, "N": n, "C": c, "steps": steps, "examples_seen": s,
              "epochs": s / d, "train_seconds": c * 1e-9 * rng.uniform(0.5, 2.0), "device": "cpu",
              "dataset": "fm", "dataset_version": "v", "metrics": {METRIC: law(family, c, d)},
              "sampling_seconds_per_image": None if family == "vae" else float(rng.uniform(1e-4, 1e-2)),
              "extractor": "fmnist-classifier:test", "best": None}
    if family == "ddpm":  # a diffusion model counts what sampling an image costs, too
        result.update(sampling_steps=50, sampling_flops_per_image=float(rng.uniform(1e9, 4e9)))
    return result


def results() -> list[dict]:
    rng = np.random.default_rng(0)
    return [trial(f, d, steps, rng) for f in LAWS for d in SIZES for steps in STEPS]


def write_study(folder: Path, done: list[dict], failed: dict[str, str], axes: dict) -> Path:
    """A study folder (plan.json, study.yaml, trials/<id>/result.json or error.json) of these results."""
    study_dir = folder / "study"
    study = {"name": "families", "metric": METRIC, "metric_at": "final", "fit": FIT_CFG, "axes": axes,
             "operating_point": {"data_size": None, "flops": None}, "costs": None}
    trials = [{"id": r["trial"], "axes": r["axes"], "role": "grid", "config": {"model": {"family": r["family"]}}}
              for r in done] + [{"id": t, "axes": axes_, "role": "grid", "config": {}} for t, axes_ in failed.items()]
    plan = {"name": "families", "study": study, "parent_run_id": "-", "dataset": "fm", "dataset_version": "v",
            "full_data_size": 64000, "operating_data_size": 8000, "operating_flops": None, "trials": trials}
    (study_dir / "trials").mkdir(parents=True)
    (study_dir / "plan.json").write_text(json.dumps(plan))
    (study_dir / "study.yaml").write_text(json.dumps(study))
    for r in done:
        (study_dir / "trials" / r["trial"]).mkdir()
        (study_dir / "trials" / r["trial"] / "result.json").write_text(json.dumps(r))
    for t in failed:
        (study_dir / "trials" / t).mkdir()
        (study_dir / "trials" / t / "error.json").write_text(json.dumps({"trial": t, "error": "RuntimeError: "
                                                                          "diverged", "traceback": ""}))
    return study_dir


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(study folder, analysis, the trial results): three families, one vae trial failed."""
    everything = results()
    done = [r for r in everything if r["trial"] != FAILED]
    failed = {FAILED: next(r["axes"] for r in everything if r["trial"] == FAILED)}
    study_dir = write_study(tmp_path_factory.mktemp("groups"), done, failed, AXES)
    return study_dir, analyse_study(study_dir), done


STUDY_KEYS = ("floor_how", "metric_at", "failed", "trials_total", "summary_metrics")  # added by analyse_study


def test_each_family_recovers_its_own_law_which_the_pooled_fit_does_not(study):
    _, analysis, done = study
    assert analysis["group_axis"] == "model.family" and list(analysis["groups"]) == ["gan", "vae", "ddpm"]
    x = np.array([[r["C"], r["D"]] for r in done])
    pooled = fit_power_law(x, np.array([r["metrics"][METRIC] for r in done]), ("C", "D")).params()
    for family, (e, _, alpha, _, beta) in LAWS.items():
        group = analysis["groups"][family]
        assert group["trials_used"] == 16 - (family == "vae")
        fitted = group["laws"]["L(C, D)"]["params"]
        assert fitted["alpha[C]"] == pytest.approx(alpha, abs=1e-3), family
        assert fitted["alpha[D]"] == pytest.approx(beta, abs=1e-3), family
        assert fitted["E"] == pytest.approx(e, rel=1e-3), family
        assert abs(pooled["alpha[C]"] - alpha) + abs(pooled["alpha[D]"] - beta) > 0.05, (family, pooled)
        assert group["holdout"]["chosen"] == "L(C, D)" and group["verdict"]["law"] == "L(C, D)"
        assert {t.split("-")[1] for t in group["holdout"]["held_out"]} == {family}  # its own trials only
        assert "model.family" not in group["comparisons"] and group["laws_fitted_at"] == {}


def test_composed_verdict_names_each_family_and_the_study_numbers_still_read(study):
    _, analysis, done = study
    v, groups = analysis["verdict"], analysis["groups"]
    assert v["decision"] == "per group" and v["decisions"] == {g: groups[g]["verdict"]["decision"] for g in LAWS}
    assert v["sentence"] == "; ".join(f"{g}: {groups[g]['verdict']['sentence'].rstrip('.')}" for g in LAWS) + "."
    assert v["sentence"].startswith("gan: At 8,000 unique training images and ")
    assert "; vae: At 8,000" in v["sentence"] and "; ddpm: At 8,000" in v["sentence"]
    assert analysis["summary_metrics"] == {"trials_done": 47, "trials_failed": 1, "data_2x_change": None,
                                           "compute_2x_change": None}
    assert [f["trial"] for f in analysis["failed"]] == [FAILED] and analysis["trials_total"] == 48
    assert [f["trial"] for f in groups["vae"]["failed"]] == [FAILED] and groups["gan"]["failed"] == []
    assert groups["vae"]["summary_metrics"]["trials_done"] == 15 and groups["vae"]["trials_total"] == 16
    assert groups["ddpm"]["summary_metrics"]["data_2x_change"] == groups["ddpm"]["verdict"]["data_2x"]["change"]
    # each family's verdict is at its own largest compute: its FLOPs per step differ
    assert [groups[g]["verdict"]["C0"] for g in LAWS] == [K * PARAMS[g] * STEPS[-1] * BATCH for g in LAWS]


def test_a_group_is_the_analysis_of_its_trials_alone_and_one_family_value_is_todays_analysis(study):
    _, analysis, done = study
    gan = [r for r in done if r["family"] == "gan"]
    scaling = {"data.size": SIZES, "train.steps": STEPS}
    kw = {"metric": METRIC, "fit_cfg": FIT_CFG, "operating_data_size": 8000, "operating_flops": None,
          "unit": "unique training images"}
    alone = analyse(gan, axes=scaling, **kw)
    assert {k: v for k, v in analysis["groups"]["gan"].items() if k not in STUDY_KEYS} == alone

    one_value = analyse(gan, axes={"model.family": ["gan"], **scaling}, **kw)  # the study lists the axis
    assert "groups" not in one_value and "group_axis" not in one_value
    differs = ("comparisons", "laws_fitted_at")  # as before groups: a one-valued axis is listed as a treatment
    assert {k: v for k, v in one_value.items() if k not in differs} == \
        {k: v for k, v in alone.items() if k not in differs}
    assert one_value["laws_fitted_at"] == {"model.family": "gan"} and alone["laws_fitted_at"] == {}
    assert one_value["comparisons"]["model.family"]["vs_baseline"] == {} and alone["comparisons"] == {}

def test_cost_summary_is_the_median_of_each_familys_trials(study):
    _, analysis, done = study
    for family in LAWS:
        mine = [r for r in done if r["family"] == family]
        summary = analysis["group_summary"][family]
        best = min(mine, key=lambda r: r["metrics"][METRIC])
        assert summary["trials"] == len(mine) and summary["N"] == [PARAMS[family]] * 2
        assert (summary["best"], summary["best_C"], summary["best_trial"]) == (
            best["metrics"][METRIC], best["C"], best["trial"])
        assert summary["seconds_per_flop"] == np.median([r["train_seconds"] / r["C"] for r in mine])
        seconds = [r["sampling_seconds_per_image"] for r in mine if r["sampling_seconds_per_image"] is not None]
        assert summary["sampling_seconds_per_image"] == (np.median(seconds) if seconds else None)
        flops = [r["sampling_flops_per_image"] for r in mine if "sampling_flops_per_image" in r]
        assert summary["sampling_flops_per_image"] == (np.median(flops) if flops else None)
    assert analysis["group_summary"]["vae"]["sampling_seconds_per_image"] is None  # no trial recorded one
    assert analysis["group_summary"]["gan"]["sampling_flops_per_image"] is None
    assert analysis["group_summary"]["ddpm"]["sampling_flops_per_image"] > 1e9


def test_report_leads_with_each_verdict_compares_the_families_then_gives_each_its_section(study):
    study_dir, analysis, _ = study
    md, page = (study_dir / "report.md").read_text(), (study_dir / "report.html").read_text()
    files = study_dir / "report_files"
    for name in ("groups_metric_vs_compute", "groups_metric_vs_data"):
        assert (files / f"{name}.png").stat().st_size > 10_000 and f"(report_files/{name}.png)" in md
    for family in LAWS:
        for name in ("metric_vs_compute", "metric_vs_data", "surface", "residuals"):
            assert (files / family / f"{name}.png").exists(), (family, name)
        assert f"(report_files/{family}/metric_vs_data.png)" in md
    lines = md.splitlines()
    verdicts = lines[lines.index("## Verdict") + 2:lines.index("## Verdict") + 7:2]
    assert verdicts == [f"{g}: {analysis['groups'][g]['verdict']['sentence']}" for g in LAWS]
    order = [md.find(s) for s in ("## Verdict", "## Families compared", "groups_metric_vs_compute.png",
                                  "| family | trials |", "## model.family=gan", "### Verdict", "#### Held-out trials",
                                  "### Fits", "### Trials", "## model.family=vae", "## model.family=ddpm",
                                  "## Provenance")]
    assert -1 not in order and order == sorted(order), order
    assert ("| family | trials | N (parameters) | best fid_fmnist | C at best (FLOPs) | train seconds per FLOP | "
            "sampling seconds per image | sampling FLOPs per image |") in lines
    for g, c in analysis["group_summary"].items():
        row = [g, str(c["trials"]), compact_number(PARAMS[g], "count"), f"{c['best']:.4g}", f"{c['best_C']:.3g}",
               f"{c['seconds_per_flop']:.3g}"] + [
            "-" if c[k] is None else f"{c[k]:.3g}" for k in ("sampling_seconds_per_image", "sampling_flops_per_image")]
        assert "| " + " | ".join(row) + " |" in lines, row
    vae = md.split("## model.family=vae")[1].split("## model.family=ddpm")[0]
    assert f"| {FAILED} |" in vae and FAILED not in md.split("## model.family=vae")[0].split("## Families")[1]
    assert "<h4>Held-out trials</h4>" in page and page.count("data:image/png;base64,") >= 2 + 3 * 4
    assert md.count("2× GPUs at equal wall time") == 1  # said once, not per family
