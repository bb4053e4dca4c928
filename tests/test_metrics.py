import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from genscale.metrics.image import (
    feature_moments,
    fid_from_moments,
    inception_score_from_logits,
    kid_from_features,
    mmd2_unbiased,
)


class Identity(torch.nn.Module):
    """Lets torchmetrics compute its metrics on features we pass in directly."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def features(n: int, d: int, shift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + shift


def fid_reference(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance (after TTUR): scipy's general square root of S1 S2."""
    diff = mu1 - mu2
    with warnings.catch_warnings():  # sqrtm warns on the singular products of the N < D cases
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(sigma1)) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)  # pytorch-fid raises otherwise
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# (n1, n2, d): a covariance of n < d samples is singular (rank n - 1), on one side, both, or far below d.
FID_GRID = [(50, 67, 8), (1000, 1017, 32), (300, 317, 64), (500, 40, 64), (40, 500, 64), (20, 30, 64),
            (10, 12, 128), (400, 417, 128), (100, 117, 256)]


@pytest.mark.parametrize("n1,n2,d", FID_GRID)
def test_fid_matches_scipy_sqrtm_reference(n1, n2, d):
    a, b = features(n1, d, 0.0, 1), features(n2, d, 0.4, 2)
    ref = fid_reference(*feature_moments(a), *feature_moments(b))
    assert fid_from_moments(*feature_moments(a), *feature_moments(b)) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("n,d", [(n1, d) for n1, _, d in FID_GRID])
def test_fid_of_identical_features_is_zero(n, d):
    # Singular cases too: round-off in the null space of S1 must not leak into Tr (S1 S2)^1/2 (the scipy
    # reference gives -2.5e-4 at n=100, d=256).
    moments = feature_moments(features(n, d, 0.0, 1))
    value = fid_from_moments(*moments, *moments)
    assert np.isfinite(value) and -1e-6 <= value < 1e-6


@pytest.mark.parametrize("n,d", [(50, 8), (300, 64), (1000, 32), (20, 64), (100, 256)])
def test_fid_matches_torchmetrics(n, d):
    a, b = features(n, d, 0.0, 1), features(n + 17, d, 0.4, 2)
    ours = fid_from_moments(*feature_moments(a), *feature_moments(b))
    ref = FrechetInceptionDistance(feature=Identity(d))  # float64 in, float64 states and result
    ref.update(torch.from_numpy(a), real=True)
    ref.update(torch.from_numpy(b), real=False)
    value = ref.compute()
    assert value.dtype == torch.float64
    assert ours == pytest.approx(float(value), rel=1e-6)


def test_fid_closed_form_commuting_covariances():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute, so Tr (S1 S2)^1/2 = sum sqrt(a_i b_i) and
    # FID = ||mu1 - mu2||^2 + sum (sqrt(a_i) - sqrt(b_i))^2; zeros make both singular, in shared and own directions.
    rng = np.random.default_rng(7)
    d = 64
    a, b = rng.uniform(0.1, 5.0, d), rng.uniform(0.1, 5.0, d)
    a[:8], b[4:12] = 0.0, 0.0
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = (mu1 - mu2) @ (mu1 - mu2) + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid_from_moments(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    assert fid_from_moments(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T) == pytest.approx(expected, rel=1e-9)


def test_fid_closed_form_and_self_distance():
    a = features(2000, 16, 0.0, 3)
    assert abs(fid_from_moments(*feature_moments(a), *feature_moments(a))) < 1e-6
    # Two Gaussians with equal covariance: FID is the squared distance of the means.
    mu, sigma = np.zeros(4), np.eye(4)
    assert fid_from_moments(mu, sigma, mu + 2.0, sigma) == pytest.approx(16.0, abs=1e-9)
    # Isotropic covariances s1*I and s2*I: Tr(...) = d (sqrt(s1) - sqrt(s2))^2.
    assert fid_from_moments(mu, 4 * sigma, mu, 9 * sigma) == pytest.approx(4.0, abs=1e-9)


def test_kid_matches_torchmetrics():
    a, b = features(120, 10, 0.0, 4), features(120, 10, 0.3, 5)
    # With one subset of all samples, the estimate does not depend on the subset draw.
    mean, std = kid_from_features(a, b, subsets=1, subset_size=120)
    ref = KernelInceptionDistance(feature=Identity(10), subsets=1, subset_size=120)
    ref.update(torch.from_numpy(a), real=True)
    ref.update(torch.from_numpy(b), real=False)
    ref_mean, _ = ref.compute()
    assert mean == pytest.approx(float(ref_mean), rel=1e-6)
    assert std == 0.0


def test_kid_near_zero_for_same_distribution():
    a = features(4000, 10, 0.0, 6)  # two disjoint halves of one sample: MMD^2 is unbiased, so near 0
    same = mmd2_unbiased(a[:2000], a[2000:])
    shifted = mmd2_unbiased(a[:2000], a[2000:] + 0.5)
    assert abs(same) < 0.02 * shifted


def test_inception_score_closed_forms():
    k = 10
    assert inception_score_from_logits(np.zeros((100, k))) == pytest.approx(1.0)
    confident = np.full((100, k), -1e4)
    confident[np.arange(100), np.arange(100) % k] = 0.0  # one-hot, classes equally used
    assert inception_score_from_logits(confident) == pytest.approx(k, rel=1e-6)
    collapsed = np.full((100, k), -1e4)
    collapsed[:, 3] = 0.0
    assert inception_score_from_logits(collapsed) == pytest.approx(1.0)


def test_inception_extractor_shape_and_determinism():
    from genscale.metrics.inception import FEATURE_DIM, InceptionExtractor

    extractor = InceptionExtractor("cpu")
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8))
    f1, logits = extractor(images)
    f2, _ = extractor(images)
    assert f1.shape == (2, FEATURE_DIM) and logits is None
    assert torch.equal(f1, f2)
    assert torch.isfinite(f1).all() and (f1 >= 0).all()  # pool3 follows a ReLU
    assert not torch.allclose(f1[0], f1[1])
    rgb, _ = extractor(images.expand(-1, 3, -1, -1))
    torch.testing.assert_close(rgb, f1)  # grayscale is repeated to three channels
