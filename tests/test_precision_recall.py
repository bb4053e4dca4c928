"""Improved precision and recall (Kynkaanniemi et al. 2019): closed forms, a plain k-NN reference, invariances."""

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from genscale.metrics import image
from genscale.metrics.image import knn_radii, precision_recall


def gaussian(n: int, d: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) * scale + shift


def direct_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """The definition written out: full distance matrix, radii from a k-d tree, coverage counts."""
    real_radii = cKDTree(real).query(real, k=k + 1)[0][:, k]  # column 0 is the point itself
    fake_radii = cKDTree(fake).query(fake, k=k + 1)[0][:, k]
    d = cdist(fake, real)  # (M, N)
    precision = np.count_nonzero((d <= real_radii[None, :]).any(axis=1)) / len(fake)
    recall = np.count_nonzero((d.T <= fake_radii[None, :]).any(axis=1)) / len(real)
    return precision, recall


def test_identical_sets_have_precision_and_recall_one():
    x = gaussian(300, 16, 0)
    assert precision_recall(x, x.copy()) == (1.0, 1.0)


def test_far_apart_sets_have_precision_and_recall_zero():
    assert precision_recall(gaussian(200, 16, 0), gaussian(150, 16, 1, shift=1000.0)) == (0.0, 0.0)


def test_fake_drawn_from_the_real_points_has_precision_one():
    real = gaussian(400, 16, 0)
    fake = real[np.random.default_rng(1).choice(len(real), 20, replace=False)]
    precision, recall = precision_recall(real, fake)
    assert precision == 1.0
    assert recall < 1.0


def test_a_point_exactly_at_the_radius_is_covered():
    real = np.stack([np.arange(10.0) + 1000.0, np.full(10, 1000.0)], axis=1)  # a line, neighbours 1 apart
    fake = real + [0.0, 1.0]  # each fake exactly 1 from its real twin, and k = 1 radii are exactly 1
    assert precision_recall(real, fake, k=1) == (1.0, 1.0)  # (0, 0) with < instead of <=


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knn_radii_match_kdtree(seed, k):
    x = gaussian(500, 24, seed, scale=3.0, shift=5.0)
    expected = cKDTree(x).query(x, k=k + 1)[0][:, k]
    np.testing.assert_allclose(knn_radii(x, k, batch_size=64), expected, rtol=0, atol=1e-10)


def test_knn_radii_of_exact_duplicates_are_zero():
    x = np.repeat(gaussian(30, 8, 0, shift=100.0), 4, axis=0)  # every point and 3 copies of it
    assert (knn_radii(x, 3) == 0.0).all()
    assert (knn_radii(x, 4) > 0.0).all()


@pytest.mark.parametrize("n_real,n_fake,d", [(300, 300, 8), (250, 180, 32), (120, 400, 64)])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_precision_recall_match_direct_knn(seed, k, n_real, n_fake, d):
    # Partly overlapping Gaussians, so neither number sits at 0 or 1.
    real = gaussian(n_real, d, seed)
    fake = gaussian(n_fake, d, seed + 100, scale=1.3, shift=0.3)
    assert precision_recall(real, fake, k=k, batch_size=50) == direct_precision_recall(real, fake, k)


def test_duplicates_far_from_the_origin_match_direct_knn(monkeypatch):
    # 4 copies of each of 10 isolated points give each copy a radius of exactly 0; a fake copy is covered (0 <= 0)
    # only if its distance is taken from the difference, not as the expansion's round-off at |p|^2 ~ 1e5.
    isolated = gaussian(10, 8, 0, scale=5.0, shift=130.0)  # ~20 apart, ~85 from the bulk
    real = np.concatenate([gaussian(60, 8, 1, shift=100.0), np.repeat(isolated, 4, axis=0)])
    fake = np.concatenate([gaussian(60, 8, 2, shift=100.0, scale=1.2), np.repeat(isolated, 2, axis=0)])
    expected = direct_precision_recall(real, fake, 3)
    assert precision_recall(real, fake, k=3) == expected
    monkeypatch.setattr(image, "_expansion_roundoff", lambda d: 0.0)  # the expansion alone misses some ties
    assert precision_recall(real, fake, k=3)[0] < expected[0]


def test_batch_size_does_not_change_the_result():
    real, fake = gaussian(230, 16, 0), gaussian(170, 16, 1, scale=1.2, shift=0.2)
    results = {precision_recall(real, fake, batch_size=b) for b in (1, 7, 64, 230, 10_000)}
    assert len(results) == 1


def test_collapse_keeps_precision_and_loses_recall_while_spread_loses_precision():
    real = gaussian(600, 8, 0)
    base_precision, base_recall = precision_recall(real, gaussian(600, 8, 1))
    collapsed_precision, collapsed_recall = precision_recall(real, gaussian(600, 8, 1, scale=0.3))
    spread_precision, _ = precision_recall(real, gaussian(600, 8, 1, scale=2.0))
    assert collapsed_precision >= 0.99 and collapsed_precision >= base_precision - 0.01
    assert collapsed_recall < base_recall - 0.3
    assert spread_precision < base_precision - 0.3


def test_invalid_inputs_are_rejected():
    x = gaussian(5, 3, 0)
    with pytest.raises(ValueError, match="k must be"):
        knn_radii(x, 5)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        precision_recall(x, gaussian(5, 4, 1))
    with pytest.raises(ValueError, match="batch_size"):
        precision_recall(x, x, batch_size=0)
