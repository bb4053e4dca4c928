import numpy as np
import pytest
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


@pytest.mark.parametrize("n,d", [(50, 8), (300, 64), (1000, 32)])
def test_fid_matches_torchmetrics(n, d):
    a, b = features(n, d, 0.0, 1), features(n + 17, d, 0.4, 2)
    ours = fid_from_moments(*feature_moments(a), *feature_moments(b))
    ref = FrechetInceptionDistance(feature=Identity(d))
    ref.update(torch.from_numpy(a), real=True)
    ref.update(torch.from_numpy(b), real=False)
    assert ours == pytest.approx(float(ref.compute()), rel=1e-6)


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
