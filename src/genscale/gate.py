"""The quality gate: thresholds from the config -> PASS/FAIL with one reason per threshold."""

from __future__ import annotations

from dataclasses import dataclass

from genscale.config import Threshold

EXIT_GATE_FAILED = 2  # `genscale train|eval --strict`: the run's gate failed (an error is 1, PASS 0)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: tuple[str, ...]

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def apply_gate(thresholds: dict[str, Threshold], metrics: dict[str, float], floors: dict[str, float] | None = None
               ) -> GateResult:
    """Every threshold must hold; a metric the run did not produce fails its threshold. `floors`: each metric's
    real-vs-real floor, for max_over_floor (a metric without one fails that threshold)."""
    reasons, passed, floors = [], True, floors or {}
    for name, t in sorted(thresholds.items()):
        value = metrics.get(name)
        if value is None:
            passed = False
            reasons.append(f"{name}: not measured (have {', '.join(sorted(metrics)) or 'none'})")
            continue
        floor = floors.get(name)
        if t.max_over_floor is not None and floor is None:
            passed = False
            reasons.append(f"{name}: max_over_floor needs the metric's real-vs-real floor, which this run does not "
                           "measure (FID and KID of image runs have one)")
            continue
        ok = (t.max is None or value <= t.max) and (t.min is None or value >= t.min) and \
            (t.max_over_floor is None or value <= t.max_over_floor * floor)
        bounds = " and ".join(b for b in (t.max is not None and f"<= {t.max:g}", t.min is not None
                                          and f">= {t.min:g}", t.max_over_floor is not None
                                          and f"<= {t.max_over_floor:g} x its floor {floor:.4g}") if b)
        reasons.append(f"{name} = {value:.4g} {'meets' if ok else 'violates'} {bounds}")
        passed &= ok
    return GateResult(passed, tuple(reasons))
