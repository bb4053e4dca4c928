"""The quality gate: thresholds from the config -> PASS/FAIL with one reason per threshold."""

from __future__ import annotations

from dataclasses import dataclass

from genscale.config import Threshold


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: tuple[str, ...]

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def apply_gate(thresholds: dict[str, Threshold], metrics: dict[str, float]) -> GateResult:
    """Every threshold must hold; a metric the run did not produce fails its threshold."""
    reasons, passed = [], True
    for name, t in sorted(thresholds.items()):
        value = metrics.get(name)
        if value is None:
            passed = False
            reasons.append(f"{name}: not measured (have {', '.join(sorted(metrics)) or 'none'})")
            continue
        ok = (t.max is None or value <= t.max) and (t.min is None or value >= t.min)
        bounds = " and ".join(b for b in (t.max is not None and f"<= {t.max:g}", t.min is not None
                                          and f">= {t.min:g}") if b)
        reasons.append(f"{name} = {value:.4g} {'meets' if ok else 'violates'} {bounds}")
        passed &= ok
    return GateResult(passed, tuple(reasons))
