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


KEY_PRECISION = "precision"
KEY_RECALL = "recall"


def _expansion_operand(x: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    """(N, D + 2) rows [-2 x, 1, ||x||^2]: with rows [a, ||a||^2, 1] on the left, one matrix product makes
    ||a||^2 - 2 a.b + ||b||^2, the whole squared-distance expansion without passes over the (B, N) result."""
    return np.hstack([-2.0 * x, np.ones((len(x), 1)), x_sq[:, None]])


def _squared_distances(a: np.ndarray, a_sq: np.ndarray, b_operand: np.ndarray) -> np.ndarray:
    """(len(a), N) squared distances from a to the N rows behind b_operand; round-off negatives clipped to 0."""
    d2 = np.hstack([a, a_sq[:, None], np.ones((len(a), 1))]) @ b_operand.T
    return np.maximum(d2, 0.0, out=d2)


def _expansion_roundoff(d: int) -> float:
    """Bound on the round-off of the expansion in float64, as a share of ||a||^2 + ||b||^2: the norms and the
    (d + 2)-term product each err by at most gamma_(d+2) of their absolute sums (Higham 2002, Accuracy and Stability
    of Numerical Algorithms, sec. 3.1), with a factor 2 to spare; typical errors are ~sqrt(d) eps."""
    return 4.0 * (d + 2) * np.finfo(np.float64).eps


def knn_radii(features: np.ndarray, k: int = 3, *, batch_size: int = 256) -> np.ndarray:
    """Distance (N,) from each feature vector (N, D) to its k-th nearest neighbour in the set, itself excluded.

    The radius of each sample's hypersphere in the improved precision and recall (Kynkaanniemi et al. 2019), as in
    the official code (kynkaat/improved-precision-and-recall-metric, ManifoldEstimator): the (k+1)-th smallest
    distance counting the sample itself. Here the self distance is pinned below every other, so an exact duplicate
    is a neighbour at distance 0 and never stands in for the sample. The neighbour is chosen by squared-distance
    expansion in row batches (batch_size x N at a time); its distance is then taken from the difference vector, so a
    radius is exact to float64 wherever the k-th neighbour is not tied within round-off with another.
    """
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if not 0 < k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} samples, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    sq = np.einsum("ij,ij->i", x, x)
    operand = _expansion_operand(x, sq)
    radii = np.empty(n)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        d2 = _squared_distances(x[start:stop], sq[start:stop], operand)  # (B, N)
        d2[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # self first, even against an exact duplicate
        kth = np.partition(d2, k, axis=1)[:, k]  # (B,) the (k+1)-th smallest counting self
        neighbour = np.argmax(d2 == kth[:, None], axis=1)  # cheaper than argpartition; any of a tie will do
        radii[start:stop] = np.linalg.norm(x[start:stop] - x[neighbour], axis=1)
    return radii


def _in_some_sphere(d2: np.ndarray, queries: np.ndarray, q_sq: np.ndarray, centres: np.ndarray, c_sq: np.ndarray,
                    radii: np.ndarray) -> np.ndarray:
    """(Q,) whether each query lies in some centre's hypersphere, ||q_i - c_j|| <= radii_j, given d2 (Q, C).

    Rows whose best margin radii_j^2 - d2_ij is within the expansion's round-off of 0 are decided again from the
    difference vectors, so duplicates and ties at the radius count as inside (<=, as in the reference) whatever the
    matrix product rounded to.
    """
    margin = radii[None, :] ** 2 - d2  # (Q, C), >= 0 inside
    best = margin.max(axis=1)
    tol = _expansion_roundoff(queries.shape[1]) * (q_sq + c_sq.max())  # (Q,)
    inside = best > tol
    for i in np.flatnonzero(np.abs(best) <= tol):
        near = np.flatnonzero(margin[i] >= -tol[i])
        inside[i] = bool((np.linalg.norm(centres[near] - queries[i], axis=1) <= radii[near]).any())
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3, batch_size: int = 256) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of fake features (M, D) against real ones (N, D).

    Precision (KEY_PRECISION): the share of fake samples within at least one real sample's k-NN hypersphere,
    distance <= that sample's knn_radii; recall (KEY_RECALL): the share of real samples within some fake sample's.
    Follows the official code (kynkaat/improved-precision-and-recall-metric, knn_precision_recall_features): radii
    from the (k+1)-th smallest distance counting self, a sample covered when its distance is <= the radius, squared
    distances by expansion clipped at 0 (here in float64, with near-ties recomputed from differences), no
    clamp_to_percentile. Distances are computed batch_size fake rows at a time; each real-fake block serves both
    numbers, so the cost is three (N or M)^2 x D matrix products, and memory a few batch_size x max(N, M) arrays
    (256 keeps them in cache at D = 64; at D = 2048 the products dominate and 1024 is ~20% faster).
    """
    r, f = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake must be (N, D) and (M, D), got {r.shape} and {f.shape}")
    r_radii, f_radii = knn_radii(r, k, batch_size=batch_size), knn_radii(f, k, batch_size=batch_size)
    r_sq, f_sq = np.einsum("ij,ij->i", r, r), np.einsum("ij,ij->i", f, f)
    r_operand = _expansion_operand(r, r_sq)
    fake_covered = np.zeros(len(f), dtype=bool)
    real_covered = np.zeros(len(r), dtype=bool)
    for start in range(0, len(f), batch_size):
        rows = slice(start, min(start + batch_size, len(f)))
        d2 = _squared_distances(f[rows], f_sq[rows], r_operand)  # (B, N)
        fake_covered[rows] = _in_some_sphere(d2, f[rows], f_sq[rows], r, r_sq, r_radii)
        real_covered |= _in_some_sphere(d2.T, r, r_sq, f[rows], f_sq[rows], f_radii[rows])
    return float(fake_covered.mean()), float(real_covered.mean())
