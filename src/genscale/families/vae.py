"""The VAE family (Kingma & Welling 2014): a convolutional or fully connected VAE (models/vae.py), trained on the
negative ELBO by train/vae.py; sampled from the prior through the decoder. Besides the image metrics of its samples
it reports its own likelihood bounds on the test split: the negative ELBO and the importance-weighted bound (Burda
et al. 2016, k = eval.iwae_k), in nats per image and bits per dimension."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from genscale.families.image import ImageEvalConfig, ImageFamily, NetworkExport
from genscale.sections import Doc, Float, Int, ModelBase, TrainBase

if TYPE_CHECKING:
    import torch

    from genscale.config import RunConfig
    from genscale.data.datasets import DataSplits
    from genscale.train.distributed import World
    from genscale.train.vae import VaeSampler

KEY_NELBO = "nelbo"  # negative ELBO, nats per image (beta = 1: the bound, whatever beta trained the model)
KEY_NELBO_BPD = "nelbo_bpd"  # the same in bits per dimension
KEY_IWAE = "iwae_nll"  # negative importance-weighted bound, nats per image: a tighter upper bound on -log p(x)
KEY_IWAE_BPD = "iwae_bpd"


def presets() -> dict[str, dict[str, dict[str, Any]]]:
    from genscale.models.vae import PRESETS

    return PRESETS


class VaeModelConfig(ModelBase):
    presets = staticmethod(presets)

    family: Literal["vae"] = Doc("vae", "vae: a variational autoencoder (models/vae.py)")
    arch: Literal["vae-conv", "vae-mlp"] = Doc("vae-conv", "vae-conv: stride-2 convolutions; vae-mlp: one hidden "
                                               "layer (size small is the 784-400-20 VAE of Kingma & Welling 2014)")
    size: str = Doc("small", "preset of the arch (models/vae.py PRESETS)")
    latent_dim: Int = Doc(20, "latent size; 20 as in Kingma & Welling 2014's MNIST VAE", ge=1)
    beta: Float = Doc(1.0, "weight of the KL term in the training loss (beta-VAE, Higgins et al. 2017); 1 is the "
                      "ELBO. The reported bounds always use 1", gt=0)
    likelihood: Literal["logistic", "bernoulli"] = Doc(
        "logistic", "p(x|z): logistic, a discretised logistic over the 256 pixel values (Salimans et al. 2017), a "
        "proper likelihood whose nats and bits/dim compare; bernoulli, x/255 as a Bernoulli target (the original "
        "VAE's BCE), not a normalised distribution over 8-bit pixels")



class VaeTrainConfig(TrainBase):
    family: Literal["vae"] = Doc("vae", "set from model.family", exclude=True)
    betas: tuple[Float, Float] = Doc((0.9, 0.999), "Adam betas (Kingma & Ba 2015 defaults)")
    lr: Float = Doc(1e-3, "Adam learning rate", gt=0)


class VaeEvalConfig(ImageEvalConfig):
    family: Literal["vae"] = Doc("vae", "set from model.family", exclude=True)
    iwae_k: Int = Doc(100, "importance samples of the importance-weighted bound (Burda et al. 2016 report k = 5000 "
                      "for their headline numbers; 100 is most of the gain at 1% of the cost)", ge=1)
    iwae_images: Int = Doc(2000, "test images the importance-weighted bound is averaged over (the ELBO uses the "
                           "whole test split)", ge=1)


def build_recipe(cfg: RunConfig, data: DataSplits, device: torch.device, world: World):
    from genscale.errors import GenscaleError
    from genscale.train.vae import VaeRecipe

    if cfg.data.augment not in ("", "none"):
        raise GenscaleError(f"data.augment: '{cfg.data.augment}': augmentation is not built for the vae family "
                            "(its likelihood is of the stored 8-bit images)")
    return VaeRecipe(cfg, data, device, world)


def sampler_from_checkpoint(cfg: RunConfig, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any],
                            device: torch.device) -> VaeSampler:
    from genscale.train.checkpoint import load_state, unprefixed
    from genscale.train.vae import VaeSampler, build_model

    vae = build_model(cfg, tuple(sidecar["image_shape"]))
    load_state(vae, unprefixed(tensors, "vae"), "checkpoint (vae)")
    return VaeSampler(vae.to(device).eval(), device)


def likelihood_bounds(cfg: RunConfig, splits: DataSplits, sampler: VaeSampler, device: torch.device
                      ) -> dict[str, dict]:
    """The negative ELBO (beta = 1, one posterior sample per image) over the whole test split and the negative
    importance-weighted bound over its first eval.iwae_images (a class-balanced nested subset), in nats per image
    and bits per dimension. Seeded, so the same checkpoint gives the same numbers."""
    import torch

    from genscale.data.datasets import nested_subset
    from genscale.models.vae import elbo_terms, iwae_bound, nats_to_bits_per_dim
    from genscale.ui import progress

    vae, e = sampler.vae.eval(), cfg.eval
    dims = math.prod(splits.image_shape)
    test = splits.test.x
    subset = nested_subset(splits.test, min(e.iwae_images, len(test)), seed=0).x
    gen = torch.Generator(device).manual_seed(cfg.train.seed + 3)
    nelbo, iwae = [], []
    with torch.no_grad(), progress(transient=True) as bar:
        task = bar.add_task(f"likelihood bounds: ELBO of {len(test)}, IWAE (k={e.iwae_k}) of {len(subset)} test "
                            "images", total=len(test) + len(subset))
        for i in range(0, len(test), e.batch_size):
            x = test[i:i + e.batch_size].to(device)
            nelbo.append(elbo_terms(vae, x, beta=1.0, generator=gen)["nelbo"].double().cpu())
            bar.update(task, advance=len(x))
        for i in range(0, len(subset), e.batch_size):
            x = subset[i:i + e.batch_size].to(device)
            iwae.append(-iwae_bound(vae, x, k=e.iwae_k, generator=gen).double().cpu())
            bar.update(task, advance=len(x))
    nats = {KEY_NELBO: float(torch.cat(nelbo).mean()), KEY_IWAE: float(torch.cat(iwae).mean())}
    common = {"extractor": f"{cfg.model.likelihood} likelihood", "n_gen": 0}
    counts = {KEY_NELBO: (len(test), "test images"), KEY_IWAE: (len(subset), f"test images, k = {e.iwae_k}")}
    out = {}
    for key, bpd in ((KEY_NELBO, KEY_NELBO_BPD), (KEY_IWAE, KEY_IWAE_BPD)):
        n, ref = counts[key]
        out[key] = {"value": nats[key], **common, "n_ref": n, "ref": ref, "unit": "nats per image"}
        out[bpd] = {"value": nats_to_bits_per_dim(nats[key], dims), **common, "n_ref": n, "ref": ref,
                    "unit": "bits per dimension"}
    return out


def reconstructions(splits: DataSplits, sampler: VaeSampler) -> dict[str, torch.Tensor]:
    """32 test images above their reconstructions (the posterior mean decoded), in row pairs of 8."""
    import torch

    from genscale.data.datasets import nested_subset

    x = nested_subset(splits.test, min(32, len(splits.test)), seed=0).x
    with torch.no_grad():
        r = sampler.vae.eval().reconstruct(x.to(sampler.device)).cpu()
    rows = [t for i in range(0, len(x), 8) for t in (x[i:i + 8], r[i:i + 8])]
    return {"reconstructions.png": torch.cat(rows)}


VAE_SAMPLE_CODE = """\
def sample(program, n, seed, folder):
    import torch

    g = torch.Generator().manual_seed(seed)  # one CPU generator for all the noise
    # decoded {batch} at a time, the latents drawn in the same chunks, as genscale draws them
    return torch.cat([program(torch.randn(min({batch}, n - i), {latent_dim}, generator=g))  # z ~ N(0, I)
                      for i in range(0, n, {batch})])
"""


def network_export(cfg: RunConfig, sampler: VaeSampler) -> NetworkExport:
    """The decoder with the likelihood's mean image, as VaeSampler samples: z (B, latent_dim) -> uint8 images."""
    import torch

    from genscale.models.vae import SAMPLE_BATCH

    vae = sampler.vae.eval()

    class Decoded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.vae.mean_image(self.vae.decode(z))  # (B, C, H, W) uint8

    mean = "sigmoid(logits) * 255" if cfg.model.likelihood == "bernoulli" else "(location + 1) * 127.5"
    return NetworkExport(
        name="decoder", module=Decoded().eval(),
        inputs={"z": (torch.zeros(2, vae.latent_dim), f"float32 (batch, {vae.latent_dim}): latents ~ N(0, I), the "
                                                       "prior")},
        output=f"uint8 (batch, C, H, W) in [0, 255]: the {cfg.model.likelihood} likelihood's mean image ({mean}, "
               "rounded)",
        sample_code=VAE_SAMPLE_CODE.format(batch=SAMPLE_BATCH, latent_dim=vae.latent_dim),
        notes=("the decoder only: the encoder (posterior q(z|x)) is not exported",))


def count_flops(cfg: RunConfig, image_shape: tuple[int, int, int]) -> int:
    from genscale.train.vae import vae_flops_per_step

    return vae_flops_per_step(cfg, image_shape)


FAMILY = ImageFamily(
    name="vae", model_config=VaeModelConfig, train_config=VaeTrainConfig, eval_config=VaeEvalConfig,
    labels={"D": "unique training images", "N": "parameters N (encoder + decoder)", "unit": "images"},
    presets=presets, build_recipe=build_recipe, sampler_from_checkpoint=sampler_from_checkpoint,
    count_flops=count_flops, examples_per_step=lambda cfg: cfg.train.batch_size,
    model_metrics=likelihood_bounds, extra_grids=reconstructions, network_export=network_export,
    model_metric_names={KEY_NELBO: "lower", KEY_NELBO_BPD: "lower", KEY_IWAE: "lower", KEY_IWAE_BPD: "lower"},
    tune_space={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
