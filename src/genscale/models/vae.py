"""The variational autoencoder (Kingma & Welling 2014) for uint8 images (B, C, H, W), e.g. Fashion-MNIST 1x28x28.

An encoder maps an image to the mean and log-variance of a diagonal Gaussian posterior q(z|x); a decoder maps a latent
z to the parameters of p(x|z); the prior p(z) is N(0, I). Training minimises the negative ELBO in nats per image,
E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z)); evaluation adds the importance-weighted bound (Burda et al. 2016).

Pixels stay uint8 until a function needs them: the encoder reads x / 127.5 - 1 in [-1, 1], and each likelihood reads
its own target from the uint8 value. Two likelihoods (config `model.likelihood`):

- "bernoulli": the decoder outputs one logit per pixel and x / 255 in [0, 1] is the (continuous) Bernoulli target, as
  in the original VAE with binary cross-entropy. For 8-bit data this is not a normalised distribution over the 256
  pixel values, so its nats (and bits/dim) are not comparable with a discrete likelihood's, nor across datasets.
- "logistic": the discretised logistic over the 256 pixel values (Salimans et al. 2017, PixelCNN++, one component).
  The decoder outputs, per pixel, a location in the [-1, 1] scale and a log-scale (2C output channels: locations,
  then log-scales). It is a proper discrete likelihood: nats per image and bits/dim are meaningful and comparable.

Sizes are presets (data, below) so a study can vary them by name; the latent size is an argument (`latent_dim`).
The networks have no BatchNorm, so a likelihood does not depend on which other images share its batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genscale.errors import GenscaleError
from genscale.train.distributed import draw_rows

PRESETS: dict[str, dict[str, dict[str, int]]] = {
    # vae-mlp: one hidden layer of `hidden` ReLU units in the encoder and in the decoder
    "vae-mlp": {
        "tiny": {"hidden": 64},
        "small": {"hidden": 400},  # 784-400-20 with latent_dim 20: Kingma & Welling 2014's MNIST network
    },
    # vae-conv: two stride-2 convolutions of width and 2 * width channels (side / 4), and their mirror
    "vae-conv": {
        "tiny": {"width": 8},
        "small": {"width": 32},
        "base": {"width": 64},
    },
}

LIKELIHOODS = ("bernoulli", "logistic")
MIN_LOG_SCALE = -7.0  # the decoder's log-scales are clamped here, as in PixelCNN++, so gradients stay bounded
SAMPLE_BATCH = 500  # images decoded at a time by sample_images


def vae_preset(arch: str, size: str) -> dict[str, int]:
    """The widths of a named size; an unknown arch or size is a GenscaleError naming the config key."""
    if arch not in PRESETS:
        raise GenscaleError(f"model.arch: '{arch}' is not a VAE (choose from {', '.join(PRESETS)})")
    try:
        return PRESETS[arch][size]
    except KeyError:
        raise GenscaleError(f"model.size: '{size}' is not a preset of {arch} "
                            f"(choose from {', '.join(PRESETS[arch])})") from None


# --- densities and divergences ----------------------------------------------------------------------------------


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) in closed form, summed over the latent dims: (B, L) -> (B,).

    -KL = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2) (Kingma & Welling 2014, appendix B).
    """
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


def log_normal_diag(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dim: (..., L) -> (...). The density of q(z|x)."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).square() * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dim: (..., L) -> (...). The density of the prior p(z)."""
    return -0.5 * (math.log(2 * math.pi) + z.square()).sum(-1)


def bernoulli_log_likelihood(logits: torch.Tensor, x_uint8: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = -BCE-with-logits(logits, x / 255) summed over pixels: (B, C, H, W) -> (B,).

    The Bernoulli decoder of Kingma & Welling 2014 with the grey level x / 255 in [0, 1] as its target. For 8-bit
    data this is not a normalised distribution over the 256 values (its maximum is below 0 nats even for a perfect
    model when 0 < x < 255), so these nats are not comparable with a discrete likelihood's.
    """
    target = x_uint8.to(logits.dtype) / 255.0
    return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def discretized_logistic_log_likelihood(mean: torch.Tensor, log_scale: torch.Tensor,
                                        x_uint8: torch.Tensor) -> torch.Tensor:
    """log p(x|z) under the discretised logistic over the 256 pixel values, summed over pixels: (B, C, H, W) -> (B,).

    Salimans et al. 2017 (PixelCNN++), one mixture component. The value v in 0..255 sits at x = v / 127.5 - 1 in
    [-1, 1], its bin is [x - 1/255, x + 1/255], and the edge bins are open: v = 0 takes (-inf, -1 + 1/255] and
    v = 255 takes [1 - 1/255, inf), so the 256 probabilities sum to one. With a = (x + 1/255 - mean) / s and
    b = (x - 1/255 - mean) / s, the inner bins use the exact identity

        sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)),

    all in log-sigmoid / expm1 form, so the log-probability is accurate in float32 even far in the tails, where
    PixelCNN++ has to fall back to the density at the bin centre times the bin width (the difference of two
    sigmoids near 1 cancels there); this form needs no fallback. The edge bins are log sigmoid(a) and
    log sigmoid(-b) = -softplus(b).
    """
    x = x_uint8.to(mean.dtype) / 127.5 - 1.0
    centred = x - mean
    inv_scale = torch.exp(-log_scale)
    a = inv_scale * (centred + 1.0 / 255.0)  # upper edge of the bin, standardised
    b = inv_scale * (centred - 1.0 / 255.0)  # lower edge
    log_cdf_upper = F.logsigmoid(a)  # log P(X <= upper edge): the v = 0 bin
    log_sf_lower = F.logsigmoid(-b)  # log P(X >= lower edge): the v = 255 bin
    log_bin = log_cdf_upper + log_sf_lower + torch.log(-torch.expm1(b - a))  # a - b = 2 / (255 s) > 0
    log_p = torch.where(x_uint8 == 0, log_cdf_upper, torch.where(x_uint8 == 255, log_sf_lower, log_bin))
    return log_p.flatten(1).sum(1)


def nats_to_bits_per_dim(nats: float | torch.Tensor, dims: int) -> float:
    """A negative log-likelihood per image in nats, as bits per dimension: nats / (dims * ln 2), dims = C * H * W.

    The unit of van den Oord et al. 2016 and Salimans et al. 2017: a uniform model of 8-bit pixels scores 8.
    """
    return float(nats) / (dims * math.log(2.0))


# --- networks -------------------------------------------------------------------------------------------------


class MLPEncoder(nn.Module):
    """Flattened image -> hidden ReLU layer -> (mu, logvar), as in Kingma & Welling 2014 (784-400-20)."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int, latent_dim: int):
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), hidden), nn.ReLU())
        self.to_mu = nn.Linear(hidden, latent_dim)
        self.to_logvar = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(x)  # (B, hidden)
        return self.to_mu(h), self.to_logvar(h)  # (B, L) each


class MLPDecoder(nn.Module):
    """z -> hidden ReLU layer -> `out_channels` maps of the image's size (the likelihood's parameters)."""

    def __init__(self, latent_dim: int, hidden: int, image_shape: tuple[int, int, int], out_channels: int):
        super().__init__()
        _, h, w = image_shape
        self.out_shape = (out_channels, h, w)
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, math.prod(self.out_shape)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.out_shape)  # (B, out_channels, H, W)


def _check_conv_side(image_shape: tuple[int, int, int]) -> None:
    _, h, w = image_shape
    if h % 4 or w % 4:
        raise GenscaleError(f"vae-conv: image side {h}x{w} must be divisible by 4 (e.g. 28, 32)")


class ConvEncoder(nn.Module):
    """Two stride-2 4x4 convolutions with SiLU (side -> side/2 -> side/4, e.g. 28 -> 14 -> 7), then linear heads.

    No normalisation layers: BatchNorm would make an image's likelihood depend on its batch.
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int, latent_dim: int):
        super().__init__()
        _check_conv_side(image_shape)
        c, h, w = image_shape
        self.net = nn.Sequential(nn.Conv2d(c, width, 4, 2, 1), nn.SiLU(),
                                 nn.Conv2d(width, 2 * width, 4, 2, 1), nn.SiLU(), nn.Flatten())
        features = 2 * width * (h // 4) * (w // 4)
        self.to_mu = nn.Linear(features, latent_dim)
        self.to_logvar = nn.Linear(features, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)  # (B, 2 * width * side/4 * side/4)
        return self.to_mu(h), self.to_logvar(h)  # (B, L) each


class ConvDecoder(nn.Module):
    """The encoder's mirror: linear to 2*width x side/4, then two stride-2 transposed convolutions with SiLU."""

    def __init__(self, latent_dim: int, width: int, image_shape: tuple[int, int, int], out_channels: int):
        super().__init__()
        _check_conv_side(image_shape)
        _, h, w = image_shape
        self.start = (2 * width, h // 4, w // 4)
        self.project = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), nn.SiLU())
        self.net = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.SiLU(),
                                 nn.ConvTranspose2d(width, out_channels, 4, 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(-1, *self.start))  # (B, out_channels, H, W)


# --- the model ------------------------------------------------------------------------------------------------


def _draw_normal(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """N(0, 1) noise from `generator`, drawn on the generator's device and moved to `like`'s: a CPU generator gives
    the same noise whatever device the model is on. shape[0] is the batch's rows (`draw_rows`)."""
    return draw_rows(lambda m: torch.randn((m, *shape[1:]), generator=generator, device=generator.device,
                                           dtype=like.dtype), shape[0]).to(like.device)


class VAE(nn.Module):
    """An encoder, a decoder and a likelihood. `decode` returns the likelihood's parameters as a dict:
    bernoulli {"logits": (B, C, H, W)}; logistic {"mean": (B, C, H, W) in the [-1, 1] scale, "log_scale": same}."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, *, image_shape: tuple[int, int, int], latent_dim: int,
                 likelihood: str):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise GenscaleError(f"model.likelihood: '{likelihood}' is not one of {', '.join(LIKELIHOODS)}")
        self.encoder, self.decoder = encoder, decoder
        self.image_shape, self.latent_dim, self.likelihood = tuple(image_shape), latent_dim, likelihood

    def forward(self, x_uint8: torch.Tensor, *, beta: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """`elbo_terms` of a batch: the training step calls the model (or its data-parallel wrapper) this way."""
        return elbo_terms(self, x_uint8, beta=beta, generator=generator)

    def encode(self, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior q(z|x) = N(mu, diag exp(logvar)) of uint8 images (B, C, H, W): mu and logvar, (B, L) each."""
        dtype = next(self.parameters()).dtype
        return self.encoder(x_uint8.to(dtype) / 127.5 - 1.0)

    def decode(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters of p(x|z) for latents (B, L); see the class docstring."""
        out = self.decoder(z)  # (B, C or 2C, H, W)
        if self.likelihood == "bernoulli":
            return {"logits": out}
        mean, log_scale = out.chunk(2, dim=1)
        return {"mean": mean, "log_scale": log_scale.clamp(min=MIN_LOG_SCALE)}

    def log_likelihood(self, params: dict[str, torch.Tensor], x_uint8: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats per image, (B,), for the parameters `decode` returned."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood(params["logits"], x_uint8)
        return discretized_logistic_log_likelihood(params["mean"], params["log_scale"], x_uint8)

    def mean_image(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The likelihood's mean as uint8 (B, C, H, W): sigmoid(logits) * 255, or the logistic's location (clamped to
        [-1, 1]) mapped to [0, 255]; rounded. The location is the discretised logistic's mode, not exactly its mean."""
        if self.likelihood == "bernoulli":
            pixels = torch.sigmoid(params["logits"]) * 255.0
        else:
            pixels = (params["mean"].clamp(-1.0, 1.0) + 1.0) * 127.5
        return pixels.round().clamp(0, 255).to(torch.uint8)

    @torch.no_grad()
    def sample_images(self, n: int, *, generator: torch.Generator, device: torch.device | str,
                      batch_size: int = SAMPLE_BATCH) -> torch.Tensor:
        """n images (n, C, H, W) uint8 on `device`: z ~ N(0, I) from `generator`, decoded, the likelihood's mean.

        Decoded `batch_size` at a time; the noise is drawn in the same chunks, so the images depend on the seed and
        batch_size only.
        """
        like = next(self.parameters()).new_empty(0, device=device)
        images = [self.mean_image(self.decode(_draw_normal((min(batch_size, n - i), self.latent_dim), generator, like)))
                  for i in range(0, n, batch_size)]
        return torch.cat(images) if images else torch.empty(0, *self.image_shape, dtype=torch.uint8, device=device)

    @torch.no_grad()
    def reconstruct(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean at the posterior mean z = mu(x), as uint8 (B, C, H, W)."""
        mu, _ = self.encode(x_uint8)
        return self.mean_image(self.decode(mu))


def build_vae(arch: str, size: str, *, image_shape: tuple[int, int, int], latent_dim: int, likelihood: str) -> VAE:
    """A VAE for an arch ("vae-mlp" or "vae-conv"), a size preset and a likelihood ("bernoulli" or "logistic")."""
    p = vae_preset(arch, size)
    if latent_dim < 1:
        raise GenscaleError(f"model.latent_dim: {latent_dim} must be a positive integer")
    if likelihood not in LIKELIHOODS:
        raise GenscaleError(f"model.likelihood: '{likelihood}' is not one of {', '.join(LIKELIHOODS)}")
    out_channels = image_shape[0] * (1 if likelihood == "bernoulli" else 2)  # logistic: locations and log-scales
    if arch == "vae-mlp":
        encoder = MLPEncoder(image_shape, p["hidden"], latent_dim)
        decoder = MLPDecoder(latent_dim, p["hidden"], image_shape, out_channels)
    else:
        encoder = ConvEncoder(image_shape, p["width"], latent_dim)
        decoder = ConvDecoder(latent_dim, p["width"], image_shape, out_channels)
    return VAE(encoder, decoder, image_shape=image_shape, latent_dim=latent_dim, likelihood=likelihood)


# --- objectives -----------------------------------------------------------------------------------------------


def elbo_terms(vae: VAE, x_uint8: torch.Tensor, *, beta: float = 1.0,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The ELBO's terms for uint8 images (B, C, H, W), in nats per image (Kingma & Welling 2014; beta: Higgins et al.
    2017).

    recon_nll (B,): -log p(x|z) at one reparameterised z = mu + sigma * eps, eps ~ N(0, I) from `generator` (so a
    run is reproducible and resumable); kl (B,): KL(q(z|x) || p(z)) in closed form; nelbo (B,): recon_nll + kl, the
    negative ELBO at beta = 1 (for the logistic likelihood an upper bound on -log p(x)); loss (): the batch mean of
    recon_nll + beta * kl, the training loss.
    """
    mu, logvar = vae.encode(x_uint8)  # (B, L) each
    z = mu + torch.exp(0.5 * logvar) * _draw_normal(tuple(mu.shape), generator, mu)
    recon_nll = -vae.log_likelihood(vae.decode(z), x_uint8)  # (B,)
    kl = gaussian_kl(mu, logvar)  # (B,)
    return {"recon_nll": recon_nll, "kl": kl, "nelbo": recon_nll + kl, "loss": (recon_nll + beta * kl).mean()}


def iwae_bound(vae: VAE, x_uint8: torch.Tensor, *, k: int, generator: torch.Generator,
               chunk: int = 10) -> torch.Tensor:
    """The importance-weighted bound on log p(x) in nats per image, (B,) (Burda et al. 2016):

        L_k = log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x),  z_i ~ q(z|x),

    by logsumexp over the k log-weights. k = 1 is the ELBO with a Monte-Carlo KL; L_k rises towards log p(x) as k
    grows. The k samples are decoded `chunk` at a time (B * chunk images per pass) so k = 100 fits in memory; the
    noise comes from `generator` as (chunk, B, L) draws, so a chunk of k = 1 draws what elbo_terms would.
    """
    mu, logvar = vae.encode(x_uint8)  # (B, L) each
    std = torch.exp(0.5 * logvar)
    batch = x_uint8.shape[0]
    log_w = []
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        z = mu + std * _draw_normal((n, *mu.shape), generator, mu)  # (n, B, L)
        log_px = vae.log_likelihood(vae.decode(z.flatten(0, 1)), x_uint8.repeat(n, 1, 1, 1)).view(n, batch)
        log_w.append(log_px + log_standard_normal(z) - log_normal_diag(z, mu, logvar))  # (n, B)
    return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)
