"""Image-generation metrics from features: FID, KID and a classifier-based Inception Score.

Stages as in torch-fidelity: features (extracted once) -> statistics -> numbers. All math in float64.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.special

KEY_FID = "fid"
KEY_KID = "kid"
KEY_IS = "is"


def feature_moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D)."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid_from_moments(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between Gaussians, ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) (Heusel et al. 2017).

    Tr (S1 S2)^1/2 is the sum of the square roots of the eigenvalues of A^T S2 A, where A A^T = S1: a symmetric
    PSD matrix with the non-zero eigenvalues of S1 S2, so a symmetric eigensolver replaces the references'
    (TTUR, pytorch-fid) general matrix square root. A is the pivoted Cholesky factor of S1 (Higham, Accuracy and
    Stability of Numerical Algorithms, ch. 10), whose rank stops at round-off (D eps max S1_ii): a singular S1
    (fewer samples than dimensions) needs no eps * I offset, and its null space adds no round-off to the trace.
    Eigenvalues of A^T S2 A below 0 by round-off are clipped.
    """
    diff = mu1 - mu2
    c, piv, rank, info = scipy.linalg.lapack.dpstrf(sigma1, lower=1)  # P^T S1 P = L L^T
    if info < 0:
        raise ValueError(f"dpstrf: argument {-info} is invalid")
    a = np.empty((len(piv), rank))
    a[piv - 1] = np.tril(c[:, :rank])  # A = P L, (D, rank of S1); piv is 1-based
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(a.T @ sigma2 @ a), 0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / d + 1)^3, the KID kernel (Binkowski et al. 2018)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of the squared MMD with the polynomial kernel."""
    m = len(x)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def kid_from_features(f1: np.ndarray, f2: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of the unbiased MMD^2 over random equal-size subsets."""
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    m = min(subset_size, len(f1), len(f2))
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(f1[rng.choice(len(f1), m, replace=False)], f2[rng.choice(len(f2), m, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def inception_score_from_logits(logits: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), over all samples in one split."""
    p = scipy.special.softmax(np.asarray(logits, dtype=np.float64), axis=1)  # p(y|x), (N, K)
    return float(np.exp(scipy.special.rel_entr(p, p.mean(axis=0)).sum(axis=1).mean()))
