"""The verdict on planted worlds: form chosen by held-out error, the data-limited regime, validation, prices,
"not identified", the decision map and the best-checkpoint metric."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genscale.study.analysis import Surface, analyse, at_metric, gpu_scaling, price, verdict
from genscale.study.fit import PowerLaw, effective_data

FIT_CFG = {"bootstrap": 60, "seed": 0, "level": 0.9, "max_extrapolation": 4.0, "data_constrained": "auto"}
BATCH, N_PARAMS, K = 64, 1e5, 6.0  # examples per step, parameters, FLOPs per parameter per example


def trial(d: float, steps: int, value: float, seed: int = 0) -> dict:
    s = steps * BATCH
    return {"trial": f"d{d:g}-s{steps}-seed{seed}", "axes": {"data.size": d, "train.steps": steps, "seed": seed},
            "D": d, "N": N_PARAMS, "C": K * N_PARAMS * s, "steps": steps, "examples_seen": s, "epochs": s / d,
            "train_seconds": K * N_PARAMS * s * 1e-9, "metrics": {"loss": value}}


def data_constrained_world(noise: float = 0.01, seed: int = 0) -> list[dict]:
    """L = 1.5 + 60 / D'^0.35 with R* = 4: more steps on 1k examples saturate, on 64k they keep helping."""
    rng = np.random.default_rng(seed)
    out = []
    for d in (1000, 4000, 16000, 64000):
        for steps in (250, 1000, 4000, 16000):
            s = steps * BATCH
            true = 1.5 + 60 / effective_data(np.array([d]), np.array([s / d]), 4.0)[0] ** 0.35
            out.append(trial(d, steps, true * math.exp(rng.normal(0, noise))))
    return out


def test_data_constrained_world_is_recovered_and_decides_data_at_small_data():
    results = data_constrained_world()
    out = analyse(results, metric="loss", fit_cfg=FIT_CFG, operating_data_size=2000,
                  operating_flops=K * N_PARAMS * 16000 * BATCH)
    check = out["holdout"]
    assert check["chosen"] == "L(D, S) data-constrained", check["forms"]
    assert check["forms"]["L(D, S) data-constrained"]["rmse_log"] < check["forms"]["L(C, D)"]["rmse_log"] / 2
    dc = out["data_constrained"]
    assert dc["available"] and 4.0 / 1.5 <= dc["r_star"] <= 4.0 * 1.5
    v = out["verdict"]
    assert v["law"] == "L(D, S) data-constrained" and v["decision"] == "data", v["sentence"]
    assert abs(v["compute_2x"]["change"]) < 0.2 * abs(v["data_2x"]["change"])  # compute saturates at 1k-2k examples
    assert v["validation"]["status"] == "validated", v["validation"]["sentence"]
    assert "decision_map" in out


def test_a_law_of_another_form_is_flagged_by_the_held_out_check():
    # overfitting: at small data the loss rises again with more steps; neither form bends that way, and the
    # largest-compute trials (held out) are mispredicted
    results = []
    for d in (1000, 4000, 16000, 64000):
        for steps in (250, 1000, 4000, 16000):
            s = steps * BATCH
            results.append(trial(d, steps, 1.5 + 30 / s**0.3 + 0.8 * (s / d / 100) ** 0.7))
    out = analyse(results, metric="loss", fit_cfg=FIT_CFG, operating_data_size=8000,
                  operating_flops=K * N_PARAMS * 16000 * BATCH)
    validation = out["verdict"]["validation"]
    assert validation["status"] == "not validated", validation["sentence"]
    assert validation["sentence"].startswith("Not validated: ")


def test_best_checkpoint_metric_is_what_the_study_fits_by_default():
    r = {**trial(1000, 4000, 2.5), "best": {"step": 1000, "metrics": {"loss": 2.1}}}
    assert at_metric(r, "best")["metrics"] == {"loss": 2.1} and at_metric(r, "best")["final_metrics"] == {"loss": 2.5}
    assert at_metric(r, "final")["metrics"] == {"loss": 2.5}
    assert at_metric(trial(1000, 4000, 2.5), "best")["metric_from"] == "final step"  # no curve: the last step


def planted_surface(beta: float = 0.4) -> Surface:
    law = PowerLaw(axes=("C", "D"), E=2.0, A=(3e3, 500.0), alpha=(0.2, beta),
                   observed_range={"C": (1e11, 1e14), "D": (1e3, 1e5)})
    return Surface("L(C, D)", law, [law], n0=N_PARAMS, k=K, hidden=("alpha[D]",) if beta == 0 else ())


def test_price_sentence_equals_the_closed_form_of_a_planted_law():
    s = planted_surface()
    d0, c0, spf = 1e4, 1e13, 2e-10  # 5 GFLOP/s
    costs = {"spend": 1000.0, "per_example": 0.01, "device_hour": 2.5, "currency": "EUR"}
    got = price(s, d0, c0, costs, spf, "loss", "unique training examples")
    extra_d, hours = 1000 / 0.01, 1000 / 2.5
    extra_c = hours * 3600 / spf
    data = 500 / (d0 + extra_d) ** 0.4 - 500 / d0**0.4
    compute = 3e3 / (c0 + extra_c) ** 0.2 - 3e3 / c0**0.2
    assert got["data_change"] == pytest.approx(data, rel=1e-12)
    assert got["compute_change"] == pytest.approx(compute, rel=1e-12)
    # break even: 500 ((d0 + 1000/p)^-0.4 - d0^-0.4) = compute  =>  p = 1000 / ((d0^-0.4 + compute/500)^-2.5 - d0)
    even = 1000 / ((d0**-0.4 + compute / 500) ** -2.5 - d0)
    assert got["break_even_per_example"] == pytest.approx(even, rel=1e-8)
    assert got["sentence"].startswith(f"The next 1,000 EUR buys {data:.3g} loss as data (100,000 more unique training "
                                      f"examples at 0.01 each) or {compute:.3g} loss as compute (400 device-hours")
    assert f"break even at {even:.3g} per example" in got["sentence"]


def test_an_arm_whose_refits_all_sit_on_a_bound_is_not_identified_never_zero_width():
    flat = planted_surface(beta=0.0)  # data does not matter: every refit agrees exactly on a zero change
    v = verdict(flat, 1e4, 1e13, "fid", FIT_CFG)
    assert v["data_2x"]["interval"] is None and v["decision"] == "not identified"
    assert "not identified" in v["sentence"] and "[0, 0]" not in v["sentence"]
    assert "not measured" in v["gpus_2x"]["note"] and "efficiency" not in v["gpus_2x"]


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_an_exponent_the_trials_cannot_see_is_not_identified_or_has_a_real_interval(noise):
    rng = np.random.default_rng(2)
    results = [trial(d, steps, (20 + 4e3 / (steps * BATCH) ** 0.5) * math.exp(rng.normal(0, noise)))
               for d in (1000, 4000, 16000) for steps in (100, 400, 1600, 6400)]  # D plays no part
    out = analyse(results, metric="loss", fit_cfg={**FIT_CFG, "data_constrained": "off"}, operating_data_size=4000,
                  operating_flops=K * N_PARAMS * 6400 * BATCH, floor=0.0,
                  costs={"spend": 10.0, "per_example": 0.01, "device_hour": 2.5})
    surface, v = out["laws"]["L(C, D)"], out["verdict"]
    assert ("The data arm is not identified" in v["price"]["sentence"]) == (v["data_2x"]["interval"] is None)
    for name, ci in surface["intervals"].items():  # a parameter on its bound: None, never a zero-width [b, b]
        assert (ci is None) == (name in surface["not_identified"]), (name, ci)
        assert ci is None or noise == 0 or ci[1] > ci[0], (name, ci)
    if noise == 0:  # every refit lands on the bound: not identified, and the data arm with it
        assert "alpha[D]" in surface["not_identified"] and v["data_2x"]["interval"] is None
        assert v["decision"] == "not identified"
    else:
        assert v["data_2x"]["interval"] is None or v["data_2x"]["interval"][1] > v["data_2x"]["interval"][0]


def test_verify_trials_are_kept_out_of_the_fit_and_compared_with_their_prediction():
    def true_loss(d: float, steps: int) -> float:
        s = steps * BATCH
        return 1.5 + 60 / effective_data(np.array([d]), np.array([s / d]), 4.0)[0] ** 0.35

    grid = data_constrained_world()
    checks = [{**trial(4000, 16000, true_loss(4000, 16000)), "trial": "v00-verify-data2x", "role": "verify"},
              {**trial(2000, 32000, 10 * true_loss(2000, 32000)), "trial": "v01-verify-compute2x", "role": "verify"}]
    kw = {"metric": "loss", "fit_cfg": FIT_CFG, "operating_data_size": 2000,
          "operating_flops": K * N_PARAMS * 16000 * BATCH}
    out, alone = analyse(grid + checks, **kw), analyse(grid, **kw)
    assert out["laws"] == alone["laws"]  # the verify trials are in no fit
    rows = {r["trial"]: r for r in out["verdict"]["verified"]}
    assert rows["v00-verify-data2x"]["inside"] and not rows["v01-verify-compute2x"]["inside"]  # 10x off: caught
    assert rows["v00-verify-data2x"]["predicted"] == pytest.approx(true_loss(4000, 16000), rel=0.02)
    validation = out["verdict"]["validation"]
    assert validation["checked"] == len(out["holdout"]["trials"]) + 2


def gpu_trial(lr: float, gpus: int, examples_per_second: float) -> dict:
    return {"trial": f"lr{lr}-g{gpus}", "axes": {"train.lr": lr, "train.gpus": gpus}, "world_size": gpus,
            "examples_per_second": examples_per_second, "step_seconds": 64 / examples_per_second}


def test_gpu_scaling_pairs_trials_equal_in_every_other_axis():
    results = [gpu_trial(1e-3, 1, 100.0), gpu_trial(1e-3, 2, 150.0), gpu_trial(1e-3, 4, 240.0),
               gpu_trial(1e-2, 1, 80.0), gpu_trial(1e-2, 2, 144.0)]
    got = gpu_scaling(results)
    eff = {r["trial"]: r["efficiency"] for r in got["trials"]}
    assert eff == pytest.approx({"lr0.001-g1": 1.0, "lr0.001-g2": 0.75, "lr0.001-g4": 0.6, "lr0.01-g1": 1.0,
                                 "lr0.01-g2": 0.9})
    doubling = sorted(d["efficiency"] for d in got["doubling"])  # 1 -> 2 twice, 2 -> 4 once
    assert doubling == pytest.approx([0.75, 240 / 300, 0.9])
    assert got["efficiency"] == pytest.approx({"median": 0.8, "low": 0.75, "high": 0.9, "pairs": 3})


def test_the_gpu_arm_is_compute_times_twice_the_measured_efficiency_of_a_planted_law():
    s = planted_surface()
    d0, c0 = 1e4, 1e13
    eff = {"median": 0.8, "low": 0.75, "high": 0.9, "pairs": 3}
    v = verdict(s, d0, c0, "loss", FIT_CFG, gpus={"efficiency": eff})
    arm = v["gpus_2x"]
    assert arm["change"] == pytest.approx(s.predict(1.6 * c0, d0) - s.predict(c0, d0))
    assert arm["interval"] == pytest.approx(sorted([s.predict(1.5 * c0, d0) - s.predict(c0, d0),
                                                    s.predict(1.8 * c0, d0) - s.predict(c0, d0)]))
    assert arm["speedup"] == 1.6 and "0.80 [0.75, 0.90] from 3 train.gpus trial pairs" in arm["note"]
    # less than the compute arm (perfect scaling would equal it): never an assumed efficiency of 1
    assert abs(arm["change"]) < abs(v["compute_2x"]["change"])


def test_the_gpu_arm_names_the_study_probe_it_comes_from_and_a_failed_probe_gives_no_number():
    s = planted_surface()
    probe = {"of_trial": "t003", "steps": 40, "cost_seconds": 31.0, "results": []}
    eff = {"median": 0.7, "low": 0.7, "high": 0.7, "pairs": 1}
    arm = verdict(s, 1e4, 1e13, "loss", FIT_CFG, gpus={"efficiency": eff, "probe": probe})["gpus_2x"]
    assert "0.70 (one pair) from the study's own probe (40 steps of t003 on 1 and 2 processes, 31 s)" in arm["note"]
    assert arm["change"] == pytest.approx(s.predict(1.4e13, 1e4) - s.predict(1e13, 1e4))
    failed = verdict(s, 1e4, 1e13, "loss", FIT_CFG, gpus={"probe": {"error": "2 processes: error: x"}})["gpus_2x"]
    assert "probe failed" in failed["note"] and "change" not in failed
