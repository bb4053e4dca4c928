import math

import pytest
import torch

from genscale.errors import GenscaleError
from genscale.models.gan import PRESETS, build_gan
from genscale.train.gan import discriminator_loss, generator_loss, gradient_penalty


@pytest.mark.parametrize("arch", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_preset_maps_noise_to_images_and_images_to_logits(arch, shape):
    for size in PRESETS[arch]:
        g, d = build_gan(arch, size, z_dim=16, image_shape=shape)
        x = g(torch.randn(3, 16))
        assert x.shape == (3, *shape) and x.abs().max() <= 1.0  # tanh output
        assert d(x).shape == (3,)


def test_unknown_preset_and_bad_size():
    with pytest.raises(GenscaleError, match="model.size: 'huge' is not a preset of dcgan"):
        build_gan("dcgan", "huge", z_dim=8, image_shape=(1, 28, 28))
    with pytest.raises(GenscaleError, match="image side 7 must be even and above 7"):
        build_gan("dcgan", "small", z_dim=8, image_shape=(1, 7, 7))


def test_losses_closed_forms():
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -1.0])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731  softplus
    assert discriminator_loss("ns", real, fake).item() == pytest.approx((sp(0) + sp(-2)) / 2 + (sp(0) + sp(-1)) / 2)
    assert generator_loss("ns", fake).item() == pytest.approx((sp(0) + sp(1)) / 2)
    assert discriminator_loss("hinge", real, fake).item() == pytest.approx((1 + 0) / 2 + (1 + 0) / 2)
    assert generator_loss("hinge", fake).item() == pytest.approx(0.5)
    assert discriminator_loss("wgan-gp", real, fake).item() == pytest.approx(-0.5 - 1.0)


def test_gradient_penalty_of_a_linear_critic():
    # D(x) = w . x has gradient w everywhere, so the penalty is (||w|| - 1)^2 whatever the points.
    d = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1, bias=False))
    with torch.no_grad():
        d[1].weight.fill_(0.5)  # ||w|| = 0.5 * sqrt(12)
    real, fake, eps = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2), torch.rand(4, 1, 1, 1)
    assert gradient_penalty(d, real, fake, eps).item() == pytest.approx((0.5 * math.sqrt(12) - 1) ** 2)
