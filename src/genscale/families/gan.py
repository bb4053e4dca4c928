"""The GAN family: the fully connected GAN and DCGAN (models/gan.py), trained by train/gan.py, sampled from the
EMA generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from genscale.families.image import ImageEvalConfig, ImageFamily, NetworkExport, check_one_pass
from genscale.sections import Doc, Float, Int, ModelBase, TrainBase

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from genscale.config import RunConfig
    from genscale.data.datasets import DataSplits
    from genscale.train.distributed import World


def presets() -> dict[str, dict[str, dict[str, Any]]]:
    from genscale.models.gan import PRESETS

    return PRESETS


class GanModelConfig(ModelBase):
    presets = staticmethod(presets)

    family: Literal["gan"] = Doc("gan", "gan: images from noise (models/gan.py)")
    arch: Literal["dcgan", "gan-mlp"] = Doc("dcgan", "dcgan (Radford et al. 2016) or gan-mlp (Goodfellow et al. "
                                            "2014)")
    size: str = Doc("small", "preset of the arch (models/gan.py PRESETS)")
    z_dim: Int = Doc(100, "latent size; 100 like the original GAN and DCGAN papers", ge=1)
    loss: Literal["ns", "hinge", "wgan-gp"] = Doc("ns", "ns: non-saturating BCE (Goodfellow et al. 2014); hinge "
                                                  "(Lim & Ye 2017); wgan-gp (Gulrajani et al. 2017)")
    gp_weight: Float = Doc(10.0, "wgan-gp: gradient-penalty weight lambda (Gulrajani et al. 2017)", ge=0)



class GanTrainConfig(TrainBase):
    family: Literal["gan"] = Doc("gan", "set from model.family", exclude=True)
    betas: tuple[Float, Float] = Doc((0.5, 0.999), "Adam betas; (0.5, 0.999) as in DCGAN (Radford et al. 2016)")
    lr_g: Float = Doc(2e-4, "generator Adam learning rate; 2e-4 as in DCGAN", gt=0)
    lr_d: Float = Doc(2e-4, "discriminator Adam learning rate", gt=0)
    d_steps: Int = Doc(1, "discriminator updates per generator update (5 is usual for wgan-gp)", ge=1)
    ema_decay: Float = Doc(0.999, "EMA of generator weights (samples and metrics use it); decay at update n is "
                           "min(ema_decay, (1 + n) / (10 + n)), a warm-up", ge=0, lt=1)


class GanEvalConfig(ImageEvalConfig):
    family: Literal["gan"] = Doc("gan", "set from model.family", exclude=True)


@dataclass
class GanSampler:
    """The EMA generator: z ~ N(0, I) from a seeded generator -> images."""

    g: torch.nn.Module
    z_dim: int
    device: torch.device
    kind: Literal["image"] = "image"
    classes: int | None = None  # unconditional
    steps: int | None = None  # one pass of the generator

    def images(self, n: int, *, seed: int, label: int | None = None, steps: int | None = None) -> torch.Tensor:
        from genscale.metrics.evaluate import generate_images

        check_one_pass(label, steps)
        return generate_images(self.g, n, z_dim=self.z_dim, seed=seed, device=self.device)

    def images_many(self, requests: Sequence[tuple[int, int]], *, label: int | None = None,
                    steps: int | None = None) -> list[torch.Tensor]:
        import torch

        from genscale.metrics.evaluate import generate_images

        check_one_pass(label, steps)
        # each request's z as `images` draws it (its own seeded generator), then one pass for all of them
        z = torch.cat([torch.randn(n, self.z_dim, generator=torch.Generator(self.device).manual_seed(seed),
                                   device=self.device) for n, seed in requests])  # (sum n, z_dim)
        return list(generate_images(self.g, len(z), z_dim=self.z_dim, seed=0, device=self.device, z=z)
                    .split([n for n, _ in requests]))



def build_recipe(cfg: RunConfig, data: DataSplits, device: torch.device, world: World):
    from genscale.train.gan import GanRecipe

    return GanRecipe(cfg, data, device, world)


def sampler_from_checkpoint(cfg: RunConfig, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any],
                            device: torch.device) -> GanSampler:
    from genscale.models.gan import build_gan
    from genscale.train.checkpoint import load_state, unprefixed

    m = cfg.model
    g, _ = build_gan(m.arch, m.size, z_dim=m.z_dim, image_shape=tuple(sidecar["image_shape"]), loss=m.loss)
    load_state(g, unprefixed(unprefixed(tensors, "ema"), "module"), f"checkpoint step {sidecar.get('step', '?')}")
    return GanSampler(g.to(device).eval(), m.z_dim, device)


GAN_SAMPLE_CODE = """\
def sample(program, n, seed, folder):
    import torch

    g = torch.Generator().manual_seed(seed)  # one CPU generator for all the noise
    out = []
    for i in range(0, n, {batch}):  # the latents are drawn {batch} rows at a time, as genscale draws them
        z = torch.randn(min({batch}, n - i), {z_dim}, generator=g)  # (b, z_dim) ~ N(0, I)
        x = program(z)  # (b, C, H, W) in [-1, 1]
        out.append(((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)
"""


def network_export(cfg: RunConfig, sampler: GanSampler) -> NetworkExport:
    """The EMA generator (what `genscale sample` draws from): z (B, z_dim) -> images in [-1, 1]."""
    import torch

    from genscale.metrics.evaluate import GENERATE_BATCH

    return NetworkExport(
        name="generator", module=sampler.g.eval(),
        inputs={"z": (torch.zeros(2, sampler.z_dim), f"float32 (batch, {sampler.z_dim}): latents ~ N(0, I)")},
        output="float32 (batch, C, H, W) in [-1, 1] (tanh); pixels = ((x + 1) * 127.5).round().clamp(0, 255)",
        sample_code=GAN_SAMPLE_CODE.format(batch=GENERATE_BATCH, z_dim=sampler.z_dim),
        notes=("the EMA generator's weights, as genscale sample and evaluation use; BatchNorm in eval mode",))


def count_flops(cfg: RunConfig, image_shape: tuple[int, int, int]) -> int:
    from genscale.train.gan import gan_flops_per_step

    return gan_flops_per_step(cfg, image_shape)


FAMILY = ImageFamily(
    name="gan", model_config=GanModelConfig, train_config=GanTrainConfig, eval_config=GanEvalConfig,
    labels={"D": "unique training images", "N": "parameters N (generator + discriminator)", "unit": "images"},
    presets=presets, build_recipe=build_recipe, sampler_from_checkpoint=sampler_from_checkpoint,
    count_flops=count_flops, examples_per_step=lambda cfg: cfg.train.batch_size * cfg.train.d_steps,
    network_export=network_export,
    tune_space={"train.lr_g": {"type": "float", "low": 5e-5, "high": 1e-3, "log": True},
                "train.lr_d": {"type": "float", "low": 5e-5, "high": 1e-3, "log": True}})
