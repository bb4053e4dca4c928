import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from genscale.errors import GenscaleError
from genscale.models.gan import count_parameters
from genscale.models.vae import (
    PRESETS,
    VAE,
    MLPDecoder,
    MLPEncoder,
    bernoulli_log_likelihood,
    build_vae,
    discretized_logistic_log_likelihood,
    elbo_terms,
    gaussian_kl,
    iwae_bound,
    log_normal_diag,
    log_standard_normal,
    nats_to_bits_per_dim,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))  # no overflow warning for large |v|


def test_gaussian_kl_matches_torch_distributions():
    g = _gen(0)
    mu = torch.randn(16, 7, generator=g, dtype=torch.float64) * 2
    logvar = torch.randn(16, 7, generator=g, dtype=torch.float64) * 1.5
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    assert gaussian_kl(mu, logvar).shape == (16,)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected, rtol=0, atol=1e-6)
    assert gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max() == 0  # q = p


def test_gaussian_log_densities_match_torch_distributions():
    g = _gen(1)
    z, mu = torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    logvar = torch.randn(6, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(log_normal_diag(z, mu, logvar), Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1))
    torch.testing.assert_close(log_standard_normal(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_bernoulli_log_likelihood_is_minus_bce_summed_over_pixels():
    g = _gen(2)
    logits = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * 3
    x = torch.randint(0, 256, (4, 3, 5, 5), generator=g, dtype=torch.uint8)
    expected = -F.binary_cross_entropy_with_logits(logits, x.double() / 255, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(bernoulli_log_likelihood(logits, x), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mean", [-1.3, -0.6, 0.0, 0.37, 1.1])
@pytest.mark.parametrize("log_scale", [-6.0, -3.0, -1.0, 0.0, 1.5])
def test_discretized_logistic_is_a_distribution_over_the_256_values(mean, log_scale):
    # One 1x1x1 image per pixel value: exp(log p) over the batch is the whole probability mass function.
    x = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    m, ls = torch.full((256, 1, 1, 1), mean), torch.full((256, 1, 1, 1), log_scale)
    log_p = discretized_logistic_log_likelihood(m, ls, x)  # float32
    assert log_p.shape == (256,) and torch.isfinite(log_p).all()
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    # Against the CDF difference written out, in float64, for mid-range values (0 < v < 255).
    v = np.arange(1, 255)
    centre, s = v / 127.5 - 1, np.exp(log_scale)
    direct = _sigmoid((centre + 1 / 255 - mean) / s) - _sigmoid((centre - 1 / 255 - mean) / s)
    mass = direct > 1e-12  # where the float64 difference itself is still accurate
    np.testing.assert_allclose(log_p[1:255].exp().double().numpy()[mass], direct[mass], rtol=1e-4, atol=1e-7)
    # Edge bins are open to -inf and +inf.
    assert log_p[0].exp().item() == pytest.approx(_sigmoid((-1 + 1 / 255 - mean) / s), rel=1e-4, abs=1e-7)
    assert log_p[255].exp().item() == pytest.approx(1 - _sigmoid((1 - 1 / 255 - mean) / s), rel=1e-4, abs=1e-7)


def test_discretized_logistic_is_accurate_and_differentiable_far_in_the_tails():
    # A sharp logistic at -1 and x = 200: both sigmoids are 1 - O(e^-200) and their float difference is 0; the
    # log-sigmoid form stays exact. float32 must agree with float64, the gradient must be finite.
    x = torch.tensor([200, 128, 3, 254], dtype=torch.uint8).view(4, 1, 1, 1)
    mean = torch.tensor([-1.0, 0.9, 0.8, -0.9], dtype=torch.float64).view(4, 1, 1, 1).requires_grad_()
    log_scale = torch.full((4, 1, 1, 1), -5.0, dtype=torch.float64)
    ll64 = discretized_logistic_log_likelihood(mean, log_scale, x)
    ll32 = discretized_logistic_log_likelihood(mean.float(), log_scale.float(), x)
    # Far above the mean P(bin) -> exp(-b) - exp(-a) = exp(-b) * (1 - exp(-(a - b))), a - b = 2 / (255 s).
    s = math.exp(-5.0)
    b = (200 / 127.5 - 1 - 1 / 255 + 1.0) / s
    assert ll64[0].item() == pytest.approx(-b + math.log(-math.expm1(-2 / 255 / s)), rel=1e-9)
    torch.testing.assert_close(ll32.double(), ll64.detach(), rtol=1e-5, atol=0)
    ll64.sum().backward()
    assert torch.isfinite(mean.grad).all()


def _hand_set_vae(likelihood: str) -> VAE:
    """A 1x2x2 image, 2 hidden units, latent 1, with the weights set to the numbers in _HAND."""
    shape, out = (1, 2, 2), (1 if likelihood == "bernoulli" else 2)
    vae = VAE(MLPEncoder(shape, 2, 1), MLPDecoder(1, 2, shape, out), image_shape=shape, latent_dim=1,
              likelihood=likelihood).double()
    enc, dec = vae.encoder, vae.decoder
    with torch.no_grad():
        enc.hidden[1].weight.copy_(torch.tensor(_HAND["W1"]))
        enc.hidden[1].bias.copy_(torch.tensor(_HAND["b1"]))
        enc.to_mu.weight.copy_(torch.tensor([_HAND["w_mu"]]))
        enc.to_mu.bias.fill_(_HAND["b_mu"])
        enc.to_logvar.weight.copy_(torch.tensor([_HAND["w_lv"]]))
        enc.to_logvar.bias.fill_(_HAND["b_lv"])
        dec.net[0].weight.copy_(torch.tensor(_HAND["V1"]).view(2, 1))
        dec.net[0].bias.copy_(torch.tensor(_HAND["c1"]))
        dec.net[2].weight.copy_(torch.tensor(_HAND["V2"][: 4 * out]))
        dec.net[2].bias.copy_(torch.tensor(_HAND["c2"][: 4 * out]))
    return vae


_HAND = {
    "W1": [[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, -1.0, 0.0]], "b1": [0.1, -0.2],  # encoder hidden layer
    "w_mu": [0.5, 0.25], "b_mu": 0.1, "w_lv": [0.2, -0.5], "b_lv": 0.0,  # mu and logvar heads
    "V1": [1.0, -2.0], "c1": [0.0, 0.5],  # decoder hidden layer
    # decoder output: 4 logits (bernoulli), or 4 locations then 4 log-scales (logistic)
    "V2": [[1.0, 0.0], [-1.0, 0.5], [0.5, 0.5], [0.0, -1.0], [-0.5, 0.0], [0.0, -0.5], [0.2, 0.2], [0.0, 0.0]],
    "c2": [0.0, 0.1, -0.1, 0.2, -1.0, -2.0, -1.5, -0.5],
}


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic"])
def test_elbo_of_a_hand_set_model_matches_a_hand_computation(likelihood):
    vae = _hand_set_vae(likelihood)
    x = torch.tensor([[[[0, 255], [51, 204]]]], dtype=torch.uint8)  # (1, 1, 2, 2)
    terms = elbo_terms(vae, x, beta=0.5, generator=_gen(7))
    eps = torch.randn((1, 1), generator=_gen(7), dtype=torch.float64).item()  # the same draw

    # The forward pass, by hand.
    v = np.array([0, 255, 51, 204], dtype=np.float64)
    xin = v / 127.5 - 1  # [-1, 1, -0.6, 0.6]
    h = np.maximum(np.array(_HAND["W1"]) @ xin + _HAND["b1"], 0)  # [0, 1.4]
    mu = np.dot(_HAND["w_mu"], h) + _HAND["b_mu"]  # 0.45
    logvar = np.dot(_HAND["w_lv"], h) + _HAND["b_lv"]  # -0.7
    z = mu + np.exp(0.5 * logvar) * eps
    h2 = np.maximum(np.array(_HAND["V1"]) * z + _HAND["c1"], 0)
    out = np.array(_HAND["V2"]) @ h2 + _HAND["c2"]
    if likelihood == "bernoulli":
        t = v / 255
        log_px = np.sum(t * np.log(_sigmoid(out[:4])) + (1 - t) * np.log(1 - _sigmoid(out[:4])))
    else:
        m, s = out[:4], np.exp(out[4:])
        upper, lower = _sigmoid((xin + 1 / 255 - m) / s), _sigmoid((xin - 1 / 255 - m) / s)
        p = np.where(v == 0, upper, np.where(v == 255, 1 - lower, upper - lower))
        log_px = np.sum(np.log(p))
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar)

    assert terms["recon_nll"].shape == terms["kl"].shape == (1,)
    assert terms["recon_nll"].item() == pytest.approx(-log_px, abs=1e-6)
    assert terms["kl"].item() == pytest.approx(kl, abs=1e-6)
    assert terms["nelbo"].item() == pytest.approx(-log_px + kl, abs=1e-6)
    assert terms["loss"].item() == pytest.approx(-log_px + 0.5 * kl, abs=1e-6)


def test_elbo_noise_comes_from_the_generator():
    vae = build_vae("vae-mlp", "tiny", image_shape=(1, 8, 8), latent_dim=4, likelihood="logistic")
    x = torch.randint(0, 256, (5, 1, 8, 8), generator=_gen(0), dtype=torch.uint8)
    g = _gen(3)
    first = elbo_terms(vae, x, beta=1.0, generator=g)["loss"]
    state = g.get_state()
    second = elbo_terms(vae, x, beta=1.0, generator=g)["loss"]
    g.set_state(state)  # a resumed run restores the generator and draws the same noise
    assert elbo_terms(vae, x, beta=1.0, generator=g)["loss"].item() == second.item() != first.item()


def _tiny_model_and_batch() -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(0)
    vae = build_vae("vae-mlp", "tiny", image_shape=(1, 4, 4), latent_dim=2, likelihood="logistic").double()
    x = torch.randint(0, 256, (3, 1, 4, 4), generator=_gen(11), dtype=torch.uint8)
    return vae, x


def test_iwae_with_one_sample_is_the_elbo_with_a_monte_carlo_kl():
    vae, x = _tiny_model_and_batch()
    bound = iwae_bound(vae, x, k=1, generator=_gen(5))
    terms = elbo_terms(vae, x, beta=1.0, generator=_gen(5))  # the same eps
    mu, logvar = vae.encode(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=_gen(5), dtype=torch.float64)
    expected = -terms["recon_nll"] + log_standard_normal(z) - log_normal_diag(z, mu, logvar)
    torch.testing.assert_close(bound, expected, rtol=0, atol=1e-9)


@torch.no_grad()
def test_iwae_with_one_sample_averages_to_the_analytic_kl_elbo():
    vae, x = _tiny_model_and_batch()
    many = x[:1].repeat(20000, 1, 1, 1)  # one image, 20000 independent draws
    bound = iwae_bound(vae, many, k=1, generator=_gen(6))
    elbo = -elbo_terms(vae, many, beta=1.0, generator=_gen(8))["nelbo"]
    standard_error = math.sqrt(bound.var().item() / len(many) + elbo.var().item() / len(many))
    assert abs(bound.mean().item() - elbo.mean().item()) < 4 * standard_error


@torch.no_grad()
def test_iwae_bound_rises_with_k():
    # Decoder weights scaled by 5 make p(x|z) sharp in z, so the untrained q(z|x) fits the posterior badly and
    # importance weighting gains a lot. Seen (seeds 0-5): k=1 -> 10 gains 11-18 nats (standard error < 0.8), k=10 ->
    # 100 gains 0.9-2.1 (standard error < 0.15); the margins below are 5 and 0.5.
    torch.manual_seed(0)
    vae = build_vae("vae-mlp", "tiny", image_shape=(1, 4, 4), latent_dim=2, likelihood="bernoulli").double()
    with torch.no_grad():
        vae.decoder.net[0].weight.mul_(5)
        vae.decoder.net[2].weight.mul_(5)
    x = torch.randint(0, 256, (3, 1, 4, 4), generator=_gen(11), dtype=torch.uint8)
    many = x.repeat(200, 1, 1, 1)  # 600 bounds per k
    means = [iwae_bound(vae, many, k=k, generator=_gen(9), chunk=25).mean().item() for k in (1, 10, 100)]
    assert means[0] + 5 < means[1] < means[2] - 0.5, means


def test_nats_to_bits_per_dim_of_a_uniform_model_is_8():
    dims = 3 * 32 * 32
    assert nats_to_bits_per_dim(dims * math.log(256), dims) == pytest.approx(8.0)
    assert nats_to_bits_per_dim(torch.tensor(784 * math.log(2)), 784) == pytest.approx(1.0)  # a fair coin per pixel


@pytest.mark.parametrize("arch", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic"])
def test_every_preset_builds_encodes_decodes_and_samples(arch, shape, likelihood):
    x = torch.randint(0, 256, (2, *shape), generator=_gen(0), dtype=torch.uint8)
    for size in PRESETS[arch]:
        vae = build_vae(arch, size, image_shape=shape, latent_dim=6, likelihood=likelihood)
        mu, logvar = vae.encode(x)
        assert mu.shape == logvar.shape == (2, 6)
        assert all(p.shape == (2, *shape) for p in vae.decode(mu).values())
        assert vae.log_likelihood(vae.decode(mu), x).shape == (2,)
        images = vae.sample_images(3, generator=_gen(1), device="cpu")
        assert images.dtype == torch.uint8 and images.shape == (3, *shape)
        recon = vae.reconstruct(x)
        assert recon.dtype == torch.uint8 and recon.shape == x.shape


def test_sample_images_are_deterministic_per_seed_and_batched():
    vae = build_vae("vae-conv", "tiny", image_shape=(1, 28, 28), latent_dim=4, likelihood="bernoulli")
    a = vae.sample_images(7, generator=_gen(4), device="cpu", batch_size=3)
    assert a.shape == (7, 1, 28, 28)
    assert torch.equal(a, vae.sample_images(7, generator=_gen(4), device="cpu", batch_size=3))
    assert not torch.equal(a, vae.sample_images(7, generator=_gen(5), device="cpu", batch_size=3))
    # The mean image: sigmoid(logits) * 255, rounded.
    z = torch.randn((3, 4), generator=_gen(4))
    expected = (torch.sigmoid(vae.decode(z)["logits"]) * 255).round().to(torch.uint8)
    assert torch.equal(a[:3], expected)


def test_mean_image_of_the_logistic_maps_the_location_to_0_255():
    vae = build_vae("vae-mlp", "tiny", image_shape=(1, 1, 5), latent_dim=2, likelihood="logistic")
    mean = torch.tensor([-1.5, -1.0, 0.0, 0.5, 1.2]).view(1, 1, 1, 5)
    image = vae.mean_image({"mean": mean, "log_scale": torch.zeros_like(mean)})
    assert image.dtype == torch.uint8 and image.flatten().tolist() == [0, 0, 128, 191, 255]  # 127.5 and 191.25 round


def test_small_mlp_is_the_784_400_20_network():
    vae = build_vae("vae-mlp", "small", image_shape=(1, 28, 28), latent_dim=20, likelihood="bernoulli")
    assert count_parameters(vae) == 784 * 400 + 400 + 2 * (400 * 20 + 20) + 20 * 400 + 400 + 400 * 784 + 784
    logistic = build_vae("vae-mlp", "small", image_shape=(1, 28, 28), latent_dim=20, likelihood="logistic")
    assert count_parameters(logistic) - count_parameters(vae) == 400 * 784 + 784  # the log-scale outputs


def test_unknown_names_and_bad_shapes_are_config_errors():
    with pytest.raises(GenscaleError, match="model.size: 'huge' is not a preset of vae-conv"):
        build_vae("vae-conv", "huge", image_shape=(1, 28, 28), latent_dim=20, likelihood="bernoulli")
    with pytest.raises(GenscaleError, match="model.arch: 'vae-rnn'"):
        build_vae("vae-rnn", "small", image_shape=(1, 28, 28), latent_dim=20, likelihood="bernoulli")
    with pytest.raises(GenscaleError, match="model.likelihood: 'gaussian'"):
        build_vae("vae-mlp", "small", image_shape=(1, 28, 28), latent_dim=20, likelihood="gaussian")
    with pytest.raises(GenscaleError, match="model.latent_dim: 0"):
        build_vae("vae-mlp", "small", image_shape=(1, 28, 28), latent_dim=0, likelihood="bernoulli")
    with pytest.raises(GenscaleError, match="divisible by 4"):
        build_vae("vae-conv", "tiny", image_shape=(1, 30, 30), latent_dim=20, likelihood="bernoulli")


@pytest.mark.parametrize("arch", sorted(PRESETS))
@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic"])
def test_thirty_adam_steps_lower_the_loss(arch, likelihood):
    torch.manual_seed(0)
    # Synthetic 1x8x8 images: four fixed patterns with pixel noise.
    g = _gen(0)
    patterns = torch.randint(0, 256, (4, 1, 8, 8), generator=g).float()
    noisy = patterns.repeat(16, 1, 1, 1) + 20 * torch.randn(64, 1, 8, 8, generator=g)
    x = noisy.round().clamp(0, 255).to(torch.uint8)
    vae = build_vae(arch, "tiny", image_shape=(1, 8, 8), latent_dim=4, likelihood=likelihood)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)

    def held_loss() -> float:
        with torch.no_grad():
            return elbo_terms(vae, x, beta=1.0, generator=_gen(123))["loss"].item()

    before, noise = held_loss(), _gen(1)
    for _ in range(30):
        loss = elbo_terms(vae, x, beta=1.0, generator=noise)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Seen: 0.73-0.91 of the starting loss (the Bernoulli loss has a floor, the entropy of the grey-level targets).
    assert held_loss() < 0.95 * before
