"""The diffusion family: a UNet (models/unet.py) trained to predict the noise of the forward process (Ho et al. 2020),
by train/ddpm.py; sampled by ancestral DDPM or DDIM (Song et al. 2021) with diffusers' schedulers, from EMA weights,
class-conditional with classifier-free guidance (Ho & Salimans 2022) where the data has labels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from genscale.families.image import ImageEvalConfig, ImageFamily, NetworkExport
from genscale.sections import Doc, Float, Int, ModelBase, TrainBase

if TYPE_CHECKING:
    import torch

    from genscale.config import RunConfig
    from genscale.data.datasets import DataSplits
    from genscale.train.ddpm import DdpmSampler
    from genscale.train.distributed import World


def presets() -> dict[str, dict[str, dict[str, Any]]]:
    from genscale.models.unet import PRESETS

    return PRESETS


class DdpmModelConfig(ModelBase):
    presets = staticmethod(presets)

    family: Literal["ddpm"] = Doc("ddpm", "ddpm: a denoising diffusion model (models/unet.py, models/diffusion.py)")
    arch: Literal["unet"] = Doc("unet", "UNet with sinusoidal time embedding, residual blocks and self-attention at "
                                "the lowest resolution (Ho et al. 2020)")
    size: str = Doc("small", "preset of the UNet (models/unet.py PRESETS): tiny, small, base")
    schedule: Literal["cosine", "linear"] = Doc(
        "cosine", "noise schedule: cosine (Nichol & Dhariwal 2021), or linear beta 1e-4..0.02 (Ho et al. 2020; made "
        "for T = 1000: a short chain with it ends far from pure noise)")
    timesteps: Int = Doc(1000, "diffusion steps T of the forward process (Ho et al. 2020: 1000)", ge=2)
    dropout: Float = Doc(0.1, "dropout in the residual blocks (Ho et al. 2020: 0.1 on CIFAR-10)", ge=0, lt=1)
    class_conditional: bool = Doc(True, "condition on the dataset's labels where it has them (classifier-free "
                                  "guidance, Ho & Salimans 2022); unlabelled data trains an unconditional model")
    p_uncond: Float = Doc(0.1, "class-conditional: share of training labels replaced by the null label, so one "
                          "network is also the unconditional model guidance needs (Ho & Salimans 2022: 0.1-0.2)",
                          ge=0, le=1)



class DdpmTrainConfig(TrainBase):
    family: Literal["ddpm"] = Doc("ddpm", "set from model.family", exclude=True)
    betas: tuple[Float, Float] = Doc((0.9, 0.999), "Adam betas (Ho et al. 2020 used Adam's defaults)")
    lr: Float = Doc(2e-4, "Adam learning rate; 2e-4 as in Ho et al. 2020 (CIFAR-10)", gt=0)
    warmup_steps: Int = Doc(100, "linear learning-rate warm-up steps (Ho et al. 2020: 5000 of 800k)", ge=0)
    grad_clip: Float = Doc(1.0, "clip the global gradient norm to this (Ho et al. 2020: 1); 0 disables", ge=0)
    ema_decay: Float = Doc(0.999, "EMA of the UNet's weights, which sampling uses (Ho et al. 2020: 0.9999 over 800k "
                           "steps; short runs want less), with the min(decay, (1 + n) / (10 + n)) warm-up", ge=0, lt=1)


class DdpmEvalConfig(ImageEvalConfig):
    family: Literal["ddpm"] = Doc("ddpm", "set from model.family", exclude=True)
    sampler: Literal["ddim", "ddpm"] = Doc("ddim", "ddim (Song et al. 2021; eta 0 is deterministic) or ddpm "
                                           "(ancestral, Ho et al. 2020 Algorithm 2), diffusers' schedulers")
    sampling_steps: Int = Doc(50, "reverse steps per sample (ddim: a divisor of model.timesteps; ddpm: any, T is "
                              "the model as trained)", ge=1)
    eta: Float = Doc(0.0, "ddim: noise weight; 0 deterministic, 1 the DDPM posterior variance", ge=0)
    guidance: Float = Doc(1.0, "class-conditional: classifier-free guidance scale s (diffusers' guidance_scale): "
                          "1 the conditional model, 0 the unconditional one, > 1 sharper and less diverse", ge=0)


def check_sampling(cfg: RunConfig) -> None:
    """The sampling settings fit the trained chain (a GenscaleError naming eval.sampling_steps otherwise)."""
    from genscale.errors import GenscaleError
    from genscale.models.diffusion import check_steps, make_scheduler

    e, m = cfg.eval, cfg.model
    try:
        check_steps(make_scheduler(e.sampler, schedule=m.schedule, timesteps=m.timesteps), e.sampling_steps)
    except GenscaleError as err:
        raise GenscaleError(f"eval.sampling_steps: {str(err).removeprefix('steps: ')}") from None


def build_recipe(cfg: RunConfig, data: DataSplits, device: torch.device, world: World):
    from genscale.data.augment import parse_augment
    from genscale.errors import GenscaleError
    from genscale.train.ddpm import DdpmRecipe

    check_sampling(cfg)
    if parse_augment(cfg.data.augment)[1]:
        raise GenscaleError(f"data.augment: '{cfg.data.augment}': DiffAugment belongs to a GAN's discriminator; a "
                            "diffusion model takes the classical ones (hflip, rotate, translate, scale, jitter)")
    return DdpmRecipe(cfg, data, device, world)


def sampler_from_checkpoint(cfg: RunConfig, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any],
                            device: torch.device) -> DdpmSampler:
    from genscale.train.checkpoint import load_state, unprefixed
    from genscale.train.ddpm import DdpmSampler, build_model

    check_sampling(cfg)
    image_shape = tuple(sidecar["image_shape"])
    unet = build_model(cfg, image_shape, sidecar["num_classes"])
    load_state(unet, unprefixed(unprefixed(tensors, "ema"), "module"), "checkpoint (ema)")
    return DdpmSampler(unet.to(device).eval(), image_shape, cfg, device)


DDPM_SAMPLE_CODE = """\
def sample(program, n, seed, folder):
    import torch
    from diffusers import {scheduler_class}

    scheduler = {scheduler_class}.from_pretrained(folder, subfolder="scheduler")
    g = torch.Generator().manual_seed(seed)  # one CPU generator for x_T and every step's noise
    out = []
    for i in range(0, n, {batch}):  # {batch} images at a time, as genscale samples them
        b = min({batch}, n - i)
        scheduler.set_timesteps({steps})
        x = torch.randn((b, {shape}), generator=g)  # x_T ~ N(0, I)
{labels}        for t in scheduler.timesteps:
            tt = t.expand(b)
            # 1. predict noise
{predict}            # 2. compute the previous sample
            x = scheduler.step(eps, t, x, {step_options}generator=g).prev_sample
        out.append(((x.clamp(-1, 1).float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)
"""


def _guided_noise_code(num_classes: int | None, guidance: float) -> tuple[str, str]:
    """(the labels line, the noise-prediction lines) of DDPM_SAMPLE_CODE, as models/diffusion.py predict_noise
    computes ε for these settings: classes in turn, then conditional, unconditional or guided."""
    pad = " " * 12
    if num_classes is None:
        return "", f"{pad}eps = program(x, tt)\n"
    labels = f"        labels = torch.arange(i, i + b) % {num_classes}  # the classes in turn\n"
    null = f"torch.full((b,), {num_classes})"  # the null label: "no class"
    if guidance == 0:
        return labels, f"{pad}eps = program(x, tt, {null})\n"
    if guidance == 1:
        return labels, f"{pad}eps = program(x, tt, labels)\n"
    return labels, (f"{pad}e_cond, e_uncond = program(torch.cat([x, x]), torch.cat([tt, tt]), "
                    f"torch.cat([labels, {null}])).chunk(2)\n"
                    f"{pad}eps = e_uncond + {guidance!r} * (e_cond - e_uncond)  # classifier-free guidance\n")


def network_export(cfg: RunConfig, sampler: DdpmSampler) -> NetworkExport:
    """The EMA UNet: (x_t, t[, y]) -> ε, with the diffusers scheduler config and the loop `genscale sample` runs."""
    import torch

    from genscale.models.diffusion import SAMPLE_BATCH

    unet, e = sampler.unet.eval(), cfg.eval
    scheduler = sampler.scheduler(None)
    c, h, w = sampler.image_shape
    inputs = {"x": (torch.zeros(2, c, h, w), f"float32 (batch, {c}, {h}, {w}): the noisy image x_t"),
              "t": (torch.zeros(2, dtype=torch.long), f"int64 (batch,): timesteps in [0, {cfg.model.timesteps})")}
    if unet.num_classes is not None:
        inputs["y"] = (torch.zeros(2, dtype=torch.long), f"int64 (batch,): class labels in [0, {unet.num_classes}), "
                                                         f"{unet.num_classes} = no class (the null label)")
    labels, predict = _guided_noise_code(unet.num_classes, e.guidance)
    step_options = f"eta={e.eta!r}, use_clipped_model_output=True, " if e.sampler == "ddim" else ""
    code = DDPM_SAMPLE_CODE.format(scheduler_class=type(scheduler).__name__, batch=SAMPLE_BATCH,
                                   steps=e.sampling_steps, shape=f"{c}, {h}, {w}", labels=labels, predict=predict,
                                   step_options=step_options)
    return NetworkExport(
        name="unet", module=unet, inputs=inputs,
        output=f"float32 (batch, {c}, {h}, {w}): the predicted noise ε (epsilon prediction)", sample_code=code,
        notes=(f"the sampler is diffusers' {type(scheduler).__name__} in scheduler/ ({e.sampler}, "
               f"{e.sampling_steps} steps, eta {e.eta}, guidance {e.guidance}); load it with "
               f"{type(scheduler).__name__}.from_pretrained(folder, subfolder='scheduler')",
               "no diffusers pipeline folder (model_index.json): the UNet is genscale's own class (models/unet.py), "
               "not a diffusers UNet2DModel, so a pipeline cannot load it; the exported program is the network"),
        write_extra=lambda folder: scheduler.save_config(str(folder / "scheduler")))


def count_flops(cfg: RunConfig, image_shape: tuple[int, int, int]) -> int:
    """One training step's FLOPs; a step's labels do not change its cost, so a label-free stand-in dataset of the
    right shape is counted (conditioning adds only an embedding lookup)."""
    import torch

    from genscale.data.datasets import DataSplits, ImageData
    from genscale.train.ddpm import ddpm_flops_per_step

    x = ImageData(torch.zeros(cfg.train.batch_size, *image_shape, dtype=torch.uint8),
                  torch.zeros(cfg.train.batch_size, dtype=torch.long))
    stand_in = DataSplits(x, x, x, x, "flops", "flops", 1 if cfg.model.class_conditional else 0)
    return ddpm_flops_per_step(cfg, stand_in)


FAMILY = ImageFamily(
    name="ddpm", model_config=DdpmModelConfig, train_config=DdpmTrainConfig, eval_config=DdpmEvalConfig,
    labels={"D": "unique training images", "N": "parameters N (UNet)", "unit": "images"},
    presets=presets, build_recipe=build_recipe, sampler_from_checkpoint=sampler_from_checkpoint,
    count_flops=count_flops, examples_per_step=lambda cfg: cfg.train.batch_size, check_config=check_sampling,
    network_export=network_export,
    tune_space={"train.lr": {"type": "float", "low": 5e-5, "high": 1e-3, "log": True}})
