"""The diffusion family's training: Ho et al. 2020's L_simple (models/diffusion.py) on a UNet (models/unet.py), by
Adam with a linear learning-rate warm-up and gradient clipping, an EMA of the weights for sampling, and label dropout
for classifier-free guidance; and the recipe the shared loop drives. The timesteps, noise and label dropout come
from a seeded generator whose state is checkpointed, so a resumed run repeats an uninterrupted one bit for bit."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from genscale.config import RunConfig
from genscale.data.augment import augment_real, parse_augment
from genscale.data.datasets import DataSplits
from genscale.errors import GenscaleError
from genscale.models.diffusion import (
    SAMPLE_BATCH,
    alpha_bar,
    beta_schedule,
    check_steps,
    diffusion_loss,
    make_scheduler,
    sample_images,
)
from genscale.models.gan import count_parameters
from genscale.models.unet import UNet, build_unet
from genscale.train.checkpoint import load_state, optimizer_from_flat, optimizer_to_flat, prefixed, unprefixed
from genscale.train.distributed import SINGLE, World
from genscale.train.machinery import BatchStream, count_flops, make_ema, seed_everything, to_unit_range

if TYPE_CHECKING:
    from diffusers import DDIMScheduler, DDPMScheduler


def num_classes_of(cfg: RunConfig, num_classes: int) -> int | None:
    """The labels the UNet is conditioned on: the dataset's classes when model.class_conditional and it has any."""
    return num_classes if cfg.model.class_conditional and num_classes > 0 else None


def build_model(cfg: RunConfig, image_shape: tuple[int, int, int], num_classes: int | None) -> UNet:
    return build_unet(cfg.model.size, image_shape=image_shape, num_classes=num_classes, dropout=cfg.model.dropout)


@dataclass
class DdpmSampler:
    """A UNet (its EMA weights) with the scheduler and options of eval.sampler/sampling_steps/eta/guidance: the
    diffusers split of model and scheduler. Class-conditional models sample the classes in turn (i mod classes), so
    a sample set is class-balanced like the test split it is compared with."""

    unet: UNet
    image_shape: tuple[int, int, int]
    cfg: RunConfig
    device: torch.device
    kind: Literal["image"] = "image"

    @property
    def classes(self) -> int | None:
        return self.unet.num_classes

    @property
    def steps(self) -> int:
        return self.cfg.eval.sampling_steps

    def labels(self, n: int, label: int | None = None) -> torch.Tensor | None:
        """All n of `label`, else the classes in turn (None for an unconditional model)."""
        k = self.unet.num_classes
        if label is not None and (k is None or not 0 <= label < k):
            raise GenscaleError(f"class: {label} is not a class of this model (" +
                                (f"0 to {k - 1})" if k else "it is unconditional)"))
        return None if k is None else torch.full((n,), label) if label is not None else torch.arange(n) % k

    def scheduler(self, steps: int | None) -> DDPMScheduler | DDIMScheduler:
        m, e = self.cfg.model, self.cfg.eval
        scheduler = make_scheduler(e.sampler, schedule=m.schedule, timesteps=m.timesteps)
        check_steps(scheduler, steps or e.sampling_steps)
        return scheduler

    @torch.no_grad()
    def images(self, n: int, *, seed: int, label: int | None = None, steps: int | None = None) -> torch.Tensor:
        e = self.cfg.eval
        gen = torch.Generator().manual_seed(seed)  # on the CPU: the same images on any device
        return sample_images(self.unet, n, image_shape=self.image_shape, scheduler=self.scheduler(steps),
                             steps=steps or e.sampling_steps, eta=e.eta, guidance=e.guidance,
                             labels=self.labels(n, label), generator=gen, device=self.device)

    @torch.no_grad()
    def images_many(self, requests: Sequence[tuple[int, int]], *, label: int | None = None,
                    steps: int | None = None) -> list[torch.Tensor]:
        e = self.cfg.eval
        if e.sampler != "ddim" or e.eta != 0 or any(n > SAMPLE_BATCH for n, _ in requests):
            # stochastic steps draw from each request's own generator as they go: one request at a time
            return [self.images(n, seed=seed, label=label, steps=steps) for n, seed in requests]
        # deterministic DDIM: only x_T is random; each request's x_T as `images` draws it, then one reverse process
        x_t = torch.cat([torch.randn((n, *self.image_shape), generator=torch.Generator().manual_seed(seed))
                         for n, seed in requests])  # (sum n, C, H, W)
        labels = [self.labels(n, label) for n, _ in requests]
        images = sample_images(self.unet, len(x_t), image_shape=self.image_shape, scheduler=self.scheduler(steps),
                               steps=steps or e.sampling_steps, eta=0.0, guidance=e.guidance,
                               labels=None if labels[0] is None else torch.cat(labels),
                               generator=torch.Generator(), device=self.device, x_t=x_t)
        return list(images.split([n for n, _ in requests]))


def warmup_lr(step: int, *, lr: float, warmup_steps: int) -> float:
    """lr * min(1, (step + 1) / warmup_steps): Ho et al. 2020's linear warm-up (5000 steps there), then constant."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr


class DdpmRecipe:
    """The diffusion family for the shared loop. Per step: a batch (classically augmented, labels alongside), the
    L_simple loss at random timesteps, one clipped Adam update at the warm-up learning rate, the EMA update. Logs the
    loss, the gradient norm (before clipping) and the learning rate."""

    log_names = ("loss", "grad_norm", "lr")

    def __init__(self, cfg: RunConfig, splits: DataSplits, device: torch.device, world: World = SINGLE):
        t, m = cfg.train, cfg.model
        self.cfg, self.splits, self.device = cfg, splits, device
        seed_everything(t.seed)
        labelled = num_classes_of(cfg, splits.num_classes)
        self.unet = build_model(cfg, splits.image_shape, labelled).to(device)
        self.unet_sync = world.wrap(self.unet)  # gradients averaged over data-parallel ranks
        self.ema = make_ema(self.unet, t.ema_decay)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=t.lr, betas=t.betas, fused=device.type == "cuda")
        self.noise = torch.Generator(device).manual_seed(t.seed)
        self.alphas_cumprod = alpha_bar(beta_schedule(m.schedule, m.timesteps)).to(device)
        self.images = BatchStream(splits.train.x, t.batch_size, t.seed, world, device)
        self.labels = BatchStream(splits.train.y, t.batch_size, t.seed, world, device) if labelled else None
        self.real_ops, _ = parse_augment(cfg.data.augment)

    def step(self, step: int, autocast: Callable[[], Any], *, eager: bool = False) -> torch.Tensor:
        t = self.cfg.train
        lr = warmup_lr(step, lr=t.lr, warmup_steps=t.warmup_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        x0 = augment_real(to_unit_range(self.images.batch(step)), self.real_ops, self.noise)  # (B, C, H, W)
        y = self.labels.batch(step) if self.labels is not None else None
        self.unet.train()
        with autocast():
            loss = diffusion_loss(self.unet, x0, y, alphas_cumprod=self.alphas_cumprod, generator=self.noise,
                                  p_uncond=self.cfg.model.p_uncond, denoiser=self.unet_sync)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
        self.opt.step()
        self.ema.update_parameters(self.unet)
        return torch.stack([loss.detach(), norm.detach(), torch.tensor(lr, device=loss.device)]).float()

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        t_opt, m_opt = optimizer_to_flat(self.opt, "opt")
        tensors = {**prefixed(self.unet.state_dict(), "unet"), **prefixed(self.ema.state_dict(), "ema"), **t_opt,
                   "rng.noise": self.noise.get_state(), "rng.torch": torch.get_rng_state()}
        return tensors, {"opt": m_opt, "image_shape": self.splits.image_shape,
                         "num_classes": self.unet.num_classes}

    def restore(self, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> None:
        load_state(self.unet, unprefixed(tensors, "unet"), "checkpoint (unet)")
        load_state(self.ema, unprefixed(tensors, "ema"), "checkpoint (ema)")
        optimizer_from_flat(self.opt, "opt", tensors, sidecar["opt"])
        self.noise.set_state(tensors["rng.noise"])
        torch.set_rng_state(tensors["rng.torch"])

    def epochs(self, steps: int) -> float:
        return self.images.epochs(steps)

    def sampler(self) -> DdpmSampler:
        return DdpmSampler(self.ema.module, self.splits.image_shape, self.cfg, self.device)

    def summary(self) -> dict[str, Any]:
        """Unique examples D, the UNet's parameters N, and the cost of sampling, which training FLOPs do not show:
        FLOPs per sampled image at eval.sampling_steps (doubled under classifier-free guidance)."""
        return {"dataset": self.splits.name, "dataset_version": self.splits.version,
                "data_size": len(self.splits.train), "params": count_parameters(self.unet),
                "num_classes": self.unet.num_classes, "sampling_steps": self.cfg.eval.sampling_steps,
                "sampling_flops_per_image": sampling_flops_per_image(self.cfg, self.ema.module)}


def sampling_flops_per_image(cfg: RunConfig, unet: UNet) -> int:
    """Counted FLOPs of one UNet forward on one image, times the UNet passes of a sample: eval.sampling_steps, twice
    each when classifier-free guidance mixes a conditional and an unconditional prediction."""
    x = torch.zeros(1, *unet.image_shape, device=next(unet.parameters()).device)
    t = torch.zeros(1, dtype=torch.long, device=x.device)
    with torch.no_grad():
        per_pass = count_flops(lambda: unet(x, t, None))[1]
    guided = unet.num_classes is not None and cfg.eval.guidance not in (0, 1)
    return per_pass * cfg.eval.sampling_steps * (2 if guided else 1)


def ddpm_flops_per_step(cfg: RunConfig, splits: DataSplits) -> int:
    """FLOPs of one training step of this config (counted on the CPU, as the loop counts its first step)."""
    from genscale.train.machinery import autocast_for

    recipe = DdpmRecipe(cfg, splits, torch.device("cpu"))
    return count_flops(lambda: recipe.step(0, autocast_for(torch.device("cpu"), "fp32"), eager=True))[1]
