"""Scaling-law fits: recovery of known laws, bootstrap coverage, the verdict's decisions, effective data."""

from __future__ import annotations

import numpy as np
import pytest

from genscale.study.analysis import compute_optimal, verdict
from genscale.study.fit import (
    PowerLaw,
    bootstrap,
    effective_data,
    fit_data_constrained,
    fit_power_law,
    interval,
)

E, A, ALPHA, B, BETA = 20.0, 30.0 * 1e12**0.3, 0.3, 30.0 * 4000**0.45, 0.45  # both terms ~30 mid-grid
FIT_CFG = {"level": 0.9, "max_extrapolation": 4.0}


def law_points(noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    c, d = np.meshgrid(np.geomspace(1e11, 1e13, 5), np.geomspace(500, 32000, 5))
    x = np.column_stack([c.ravel(), d.ravel()])
    y = E + A / x[:, 0] ** ALPHA + B / x[:, 1] ** BETA
    return x, y * np.exp(rng.normal(0, noise, len(y)))


def test_fit_recovers_known_two_axis_law():
    x, y = law_points(0.005, np.random.default_rng(0))
    law = fit_power_law(x, y, ("C", "D"))
    assert law.E == pytest.approx(E, rel=0.05)
    assert law.alpha[0] == pytest.approx(ALPHA, rel=0.05)
    assert law.alpha[1] == pytest.approx(BETA, rel=0.05)
    assert law.A[1] == pytest.approx(B, rel=0.25)  # A, B trade off with the exponents; predictions do not:
    probe = np.array([[3e12, 16000.0], [2e11, 1000.0]])
    truth = E + A / probe[:, 0] ** ALPHA + B / probe[:, 1] ** BETA
    np.testing.assert_allclose(law.predict(probe), truth, rtol=0.01)
    assert law.r2_log > 0.99


def test_fit_is_exact_without_noise_one_axis():
    d = np.geomspace(100, 1e5, 8)
    y = 3.0 + 500.0 / d**0.6
    law = fit_power_law(d[:, None], y, ("D",))
    assert (law.E, law.A[0], law.alpha[0]) == pytest.approx((3.0, 500.0, 0.6), rel=1e-3)
    assert law.rmse_log < 1e-4


def test_bootstrap_intervals_cover_the_truth_at_about_the_nominal_rate():
    # The quantity the verdict reports: the predicted change from doubling D at an operating point.
    e, b, beta = 5.0, 400.0, 0.5
    d = np.geomspace(200, 20000, 8)
    d0 = 10000.0
    true_change = b / (2 * d0) ** beta - b / d0**beta
    rng = np.random.default_rng(1)
    covered, draws = 0, 30
    for i in range(draws):
        y = (e + b / d**beta) * np.exp(rng.normal(0, 0.02, len(d)))
        law = fit_power_law(d[:, None], y, ("D",))
        boots = bootstrap(d[:, None], y, ("D",), law, n_boot=40, seed=i)
        changes = np.array([m.predict(np.array([[2 * d0]]))[0] - m.predict(np.array([[d0]]))[0] for m in boots])
        lo, hi = interval(changes, 0.9)
        covered += lo <= true_change <= hi
    assert 0.75 <= covered / draws <= 1.0, covered  # nominal 0.9; percentile bootstrap on 8 points


def _law(a: float, alpha: float, b: float, beta: float) -> PowerLaw:
    return PowerLaw(axes=("C", "D"), E=1.0, A=(a, b), alpha=(alpha, beta),
                    observed_range={"C": (1e11, 1e13), "D": (1e3, 3e4)})


def test_verdict_names_the_axis_with_the_larger_predicted_gain():
    data_law = _law(a=10 * 1e12**0.1, alpha=0.1, b=10 * 1e4**0.8, beta=0.8)  # data term falls fast
    compute_law = _law(a=10 * 1e12**0.8, alpha=0.8, b=10 * 1e4**0.1, beta=0.1)
    for law, decision in ((data_law, "data"), (compute_law, "compute")):
        v = verdict(law, [law] * 10, 1e4, 1e12, "fid", FIT_CFG)
        assert v["decision"] == decision, v["sentence"]
        assert v["data_2x"]["change"] == pytest.approx(law.predict([[1e12, 2e4]])[0] - law.predict([[1e12, 1e4]])[0])
    wide = [_law(10 * 1e12**0.1, 0.1, 10 * 1e4**0.8, 0.8), _law(10 * 1e12**0.8, 0.8, 10 * 1e4**0.1, 0.1)] * 5
    assert verdict(data_law, wide, 1e4, 1e12, "fid", FIT_CFG)["decision"] == "inconclusive"
    far = verdict(data_law, [data_law], 1e6, 1e12, "fid", FIT_CFG)
    assert far["decision"] == "out of range" and "outside the observed D" in far["sentence"]


def test_effective_data_closed_forms():
    u = np.array([100.0, 100.0, 100.0, 100.0])
    got = effective_data(u, np.array([0.5, 1.0, 2.0, 1e6]), r_star=10.0)
    np.testing.assert_allclose(got, [50.0, 100.0, 100 + 100 * 10 * (1 - np.exp(-0.1)), 100 * 11.0])


def test_data_constrained_fit_recovers_r_star():
    rng = np.random.default_rng(3)
    unique = np.repeat([500.0, 2000.0, 8000.0], 4)
    epochs = np.tile([1.0, 4.0, 16.0, 64.0], 3)
    y = 2.0 + 300.0 / effective_data(unique, epochs, 8.0) ** 0.5 * np.exp(rng.normal(0, 0.002, len(unique)))
    law, r_star = fit_data_constrained(unique, epochs, y)
    assert 5.0 <= r_star <= 12.0
    assert law.alpha[0] == pytest.approx(0.5, rel=0.1)


def test_compute_optimal_split_matches_the_closed_form_of_the_true_law():
    # L(N, S) = E + A/N^a + B/S^b with C = k N S: N_opt = G (C/k)^(b/(a+b)), G = (a A / (b B))^(1/(a+b)).
    e, a_coef, a, b_coef, b, k = 2.0, 400.0, 0.35, 900.0, 0.4, 6.0
    points = []
    for n in (1e4, 3e4, 1e5, 3e5):
        for s in (1e4, 1e5, 1e6):
            fid = e + a_coef / n**a + b_coef / s**b
            points.append({"N": n, "examples_seen": s, "C": k * n * s, "metrics": {"fid": fid}})
    c0 = 1e11
    got = compute_optimal(points, "fid", c0, {"bootstrap": 10, "seed": 0, "level": 0.9})
    g = (a * a_coef / (b * b_coef)) ** (1 / (a + b))
    truth = g * (c0 / k) ** (b / (a + b))
    assert got["available"] and got["flops_per_param_example"] == pytest.approx(k)
    assert got["N_opt"] == pytest.approx(truth, rel=0.02)
    assert got["S_opt"] == pytest.approx(c0 / (k * truth), rel=0.02)


def _trial(d: int, steps: int, clean: bool, fid: float) -> dict:
    return {"axes": {"data.clean": clean, "data.size": d, "train.steps": steps}, "D": d, "C": steps * 1e6,
            "N": 1000, "steps": steps, "examples_seen": steps * 64, "epochs": 1.0, "metrics": {"fid_fmnist": fid}}


def test_treatment_axes_are_compared_pairwise_and_kept_out_of_the_laws():
    from genscale.study.analysis import analyse

    law = lambda d, s: 10 + 300 / s ** 0.5 + 200 / d ** 0.4  # noqa: E731
    results = [_trial(d, s, clean, law(d, s) - (3.0 if clean else 0.0) * (d / 1000))
               for clean in (False, True) for d in (1000, 2000, 4000, 8000) for s in (100, 400, 1600)]
    axes = {"data.clean": [False, True], "data.size": [1000, 2000, 4000, 8000], "train.steps": [100, 400, 1600]}
    out = analyse(results, metric="fid_fmnist", fit_cfg={"bootstrap": 10, "seed": 0, "level": 0.9,
                                                         "max_extrapolation": 4.0, "data_constrained": "off",
                                                         "r_star": None},
                  operating_data_size=8000, operating_flops=1600e6, axes=axes)
    c = out["comparisons"]["data.clean"]
    assert c["values"] == ["False", "True"] and len(c["rows"]) == 12
    change = c["vs_baseline"]["True"]
    assert change["pairs"] == 12
    # paired differences are -3 * d / 1000 for each d, over three step counts each
    assert change["mean_change"] == pytest.approx(-3.0 * np.mean([1, 2, 4, 8]), abs=1e-9)
    assert out["trials_used"] == 12 and out["laws_fitted_at"] == {"data.clean": "False"}
    surface = out["laws"]["L(C, D)"]["params"]  # fitted to the untreated trials only: the true law comes back
    assert surface["E"] == pytest.approx(10, rel=0.05)
