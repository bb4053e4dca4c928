from genscale.config import Threshold
from genscale.gate import apply_gate


def test_gate_passes_when_every_threshold_holds():
    result = apply_gate({"fid_fmnist": Threshold(max=40), "is_fmnist": Threshold(min=5)},
                        {"fid_fmnist": 39.9, "is_fmnist": 5.0})
    assert result.passed and result.verdict == "PASS"
    assert result.reasons == ("fid_fmnist = 39.9 meets <= 40", "is_fmnist = 5 meets >= 5")


def test_gate_fails_on_any_violation():
    result = apply_gate({"fid_fmnist": Threshold(max=40), "is_fmnist": Threshold(min=5)},
                        {"fid_fmnist": 40.1, "is_fmnist": 7.0})
    assert not result.passed and result.verdict == "FAIL"
    assert "fid_fmnist = 40.1 violates <= 40" in result.reasons


def test_gate_with_both_bounds_and_missing_metric():
    band = {"kid_fmnist": Threshold(min=0, max=0.1)}
    assert apply_gate(band, {"kid_fmnist": 0.05}).passed
    assert not apply_gate(band, {"kid_fmnist": -0.01}).passed
    missing = apply_gate({"fid": Threshold(max=10)}, {"fid_fmnist": 3.0})
    assert not missing.passed and missing.reasons == ("fid: not measured (have fid_fmnist)",)


def test_empty_gate_passes():
    assert apply_gate({}, {"fid_fmnist": 1e9}).passed


def test_gate_relative_to_the_real_vs_real_floor():
    """max_over_floor: the same gate means the same on any dataset (a 13.6 FID on a 3-class folder of shapes
    passes `fid_fmnist <= 40` though its floor may be 0.5)."""
    gate = {"fid_fmnist": Threshold(max_over_floor=3)}
    assert apply_gate(gate, {"fid_fmnist": 13.6}, {"fid_fmnist": 5.0}).passed
    failed = apply_gate(gate, {"fid_fmnist": 13.6}, {"fid_fmnist": 0.5})
    assert not failed.passed and failed.reasons == ("fid_fmnist = 13.6 violates <= 3 x its floor 0.5",)
    no_floor = apply_gate({"val_loss": Threshold(max_over_floor=2)}, {"val_loss": 1.0})
    assert not no_floor.passed and "needs the metric's real-vs-real floor" in no_floor.reasons[0]
    both = {"fid_fmnist": Threshold(max=10, max_over_floor=3)}
    assert not apply_gate(both, {"fid_fmnist": 12.0}, {"fid_fmnist": 5.0}).passed  # both bounds must hold
