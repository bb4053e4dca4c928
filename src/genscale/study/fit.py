"""Scaling-law fits: L = E + sum_i A_i / x_i^alpha_i, fitted as Hoffmann et al. (2022) did, with bootstrap CIs.

Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", approach 3) fit
L(N, D) = E + A/N^alpha + B/D^beta by minimising the Huber loss (delta = 1e-3) of
log L_pred - log L_obs with L-BFGS from a grid of starting points, parametrising
log L_pred = LSE(a - alpha log N, b - beta log D, e). `fit_power_law` does exactly that for any number of
axes (one axis: L(D) or L(C); two: L(N, D) or L(C, D)). Written by hand because no maintained library
fits this form with this loss; scipy does the optimisation.

Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models") replace repeated data by its
effective size D' = U + U R* (1 - exp(-R / R*)), R = epochs - 1: `effective_data`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022
ALPHA_MAX = 4.0  # exponents are searched in [0, ALPHA_MAX]
R_STAR_DEFAULT = 15.4  # Muennighoff et al. 2023, fitted R_D* for data repetitions


@dataclass
class PowerLaw:
    """L(x) = E + sum_i A_i / x_i^alpha_i over named axes, plus how well it fits what it was fitted to."""

    axes: tuple[str, ...]
    E: float
    A: tuple[float, ...]
    alpha: tuple[float, ...]
    observed_range: dict[str, tuple[float, float]] = field(default_factory=dict)
    r2_log: float = float("nan")  # R^2 of log L
    rmse_log: float = float("nan")  # root mean square of log residuals
    huber: float = float("nan")  # the minimised objective

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x: (n, k) positive values in axis order -> (n,) predicted L."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        return self.E + sum(a / x[:, i] ** al for i, (a, al) in enumerate(zip(self.A, self.alpha, strict=True)))

    def params(self) -> dict[str, float]:
        out = {"E": self.E}
        for name, a, al in zip(self.axes, self.A, self.alpha, strict=True):
            out[f"A[{name}]"], out[f"alpha[{name}]"] = a, al
        return out


def _objective(theta: np.ndarray, logx: np.ndarray, logy: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Huber loss of log residuals and its gradient; theta = [e, a_1..a_k, alpha_1..alpha_k]."""
    k = logx.shape[1]
    e, a, alpha = theta[0], theta[1:1 + k], theta[1 + k:]
    terms = np.empty((len(logy), 1 + k))  # (n, 1 + k): log E, log A_i - alpha_i log x_i
    terms[:, 0] = e
    terms[:, 1:] = a - alpha * logx
    top = terms.max(axis=1, keepdims=True)
    w = np.exp(terms - top)
    total = w.sum(axis=1, keepdims=True)
    r = (top + np.log(total))[:, 0] - logy  # (n,) log L_pred - log L_obs
    w /= total  # softmax = d LSE / d term
    absr = np.abs(r)
    loss = np.where(absr <= delta, 0.5 * r**2, delta * (absr - 0.5 * delta)).sum()
    dr = np.clip(r, -delta, delta)  # Huber'(r)
    grad = np.concatenate([[dr @ w[:, 0]], dr @ w[:, 1:], -(dr[:, None] * w[:, 1:] * logx).sum(0)])
    return float(loss), grad


def _starts(logx: np.ndarray, logy: np.ndarray) -> list[np.ndarray]:
    """A grid of starting points scaled to the data: each term starts at a share of the observed L."""
    k = logx.shape[1]
    y_min, y_med = float(np.exp(logy.min())), float(np.exp(np.median(logy)))
    mid = np.median(logx, axis=0)
    starts = []
    for e_share in (0.05, 0.5, 0.9):
        for alphas in itertools.product((0.2, 0.6, 1.5), repeat=k):
            alpha = np.array(alphas)
            a = np.log(max(y_med - e_share * y_min, 1e-12) / k) + alpha * mid
            starts.append(np.concatenate([[np.log(e_share * y_min)], a, alpha]))
    return starts


def _minimise(theta0: np.ndarray, logx: np.ndarray, logy: np.ndarray, delta: float):
    k = logx.shape[1]
    bounds = [(None, None)] * (1 + k) + [(0.0, ALPHA_MAX)] * k
    return minimize(_objective, theta0, args=(logx, logy, delta), jac=True, method="L-BFGS-B", bounds=bounds,
                    options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-10})


def fit_power_law(x: np.ndarray, y: np.ndarray, axes: tuple[str, ...], *, delta: float = HUBER_DELTA,
                  starts: list[np.ndarray] | None = None) -> PowerLaw:
    """Fit L = E + sum_i A_i/x_i^alpha_i to points x (n, k) > 0, y (n,) > 0; best of several L-BFGS starts."""
    x = np.atleast_2d(np.asarray(x, dtype=float))
    if x.shape[0] == 1 and len(y) > 1:
        x = x.T
    y = np.asarray(y, dtype=float)
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("power-law fit: axis values and metric values must be positive")
    logx, logy = np.log(x), np.log(y)
    best = None
    for theta0 in starts if starts is not None else _starts(logx, logy):
        res = _minimise(theta0, logx, logy, delta)
        if best is None or res.fun < best.fun:
            best = res
    k = x.shape[1]
    theta = best.x
    law = PowerLaw(axes=axes, E=float(np.exp(theta[0])), A=tuple(np.exp(theta[1:1 + k]).tolist()),
                   alpha=tuple(theta[1 + k:].tolist()),
                   observed_range={a: (float(x[:, i].min()), float(x[:, i].max())) for i, a in enumerate(axes)},
                   huber=float(best.fun))
    resid = np.log(law.predict(x)) - logy
    law.rmse_log = float(np.sqrt(np.mean(resid**2)))
    total = float(((logy - logy.mean()) ** 2).sum())
    law.r2_log = float(1 - (resid**2).sum() / total) if total > 0 else float("nan")
    return law


def theta_of(law: PowerLaw) -> np.ndarray:
    return np.concatenate([[np.log(law.E)], np.log(law.A), law.alpha])


def bootstrap(x: np.ndarray, y: np.ndarray, axes: tuple[str, ...], law: PowerLaw, *, n_boot: int = 200,
              seed: int = 0) -> list[PowerLaw]:
    """Refit on trials resampled with replacement; each refit starts from the full fit's optimum."""
    x = np.asarray(x, dtype=float).reshape(len(y), -1)
    y = np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(x[idx], axis=0)) < x.shape[1] + 2:  # too few distinct points to fit: redraw
            idx = rng.permutation(len(y))
        fits.append(fit_power_law(x[idx], y[idx], axes, starts=[theta_of(law)]))
    return fits


def interval(values: np.ndarray, level: float = 0.9) -> tuple[float, float]:
    """Percentile bootstrap interval."""
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def effective_data(unique: np.ndarray, epochs: np.ndarray, r_star: float = R_STAR_DEFAULT) -> np.ndarray:
    """Muennighoff et al. 2023: D' = U + U R* (1 - exp(-R/R*)), R = epochs - 1 repetitions beyond the first pass.

    For epochs < 1 (not every example seen) the examples seen, U * epochs, are used.
    """
    unique, epochs = np.asarray(unique, dtype=float), np.asarray(epochs, dtype=float)
    reps = np.maximum(epochs - 1, 0)
    return np.where(epochs < 1, unique * epochs, unique + unique * r_star * (1 - np.exp(-reps / r_star)))


def fit_data_constrained(unique: np.ndarray, epochs: np.ndarray, y: np.ndarray, *,
                         r_star: float | None = None) -> tuple[PowerLaw, float]:
    """L(D') = E + B/D'^beta with D' the effective data; R* given, or fitted on a log grid (best Huber loss)."""
    candidates = [r_star] if r_star is not None else list(np.geomspace(0.5, 200, 25))
    best: tuple[PowerLaw, float] | None = None
    for r in candidates:
        law = fit_power_law(effective_data(unique, epochs, r)[:, None], y, ("D_eff",))
        if best is None or law.huber < best[0].huber:
            best = (law, float(r))
    assert best is not None
    return best
