"""The GAN family: losses named after their papers, one training step (D updates, then G), and the recipe the
shared loop drives."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genscale.config import RunConfig
from genscale.data.augment import augment_real, diff_augment, parse_augment
from genscale.data.datasets import DataSplits
from genscale.models.gan import build_gan, count_parameters
from genscale.train.checkpoint import load_state, optimizer_from_flat, optimizer_to_flat, prefixed, unprefixed
from genscale.train.distributed import SINGLE, World, draw_rows, sync_batchnorm
from genscale.train.machinery import (
    BatchStream,
    autocast_for,
    count_flops,
    make_ema,
    seed_everything,
    to_unit_range,
)


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """ns: BCE, -log D(x) - log(1 - D(G(z))) (Goodfellow et al. 2014); hinge (Lim & Ye 2017;
    Miyato et al. 2018); wgan-gp critic loss E[D(G(z))] - E[D(x)] (Gulrajani et al. 2017)."""
    if kind == "ns":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return fake.mean() - real.mean()


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """ns: the non-saturating -log D(G(z)); hinge and wgan-gp: -E[D(G(z))]."""
    return F.softplus(-fake).mean() if kind == "ns" else -fake.mean()


def gradient_penalty(d: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """E[(||grad D(x_hat)||_2 - 1)^2] at x_hat = eps x + (1 - eps) G(z) (Gulrajani et al. 2017, eq. 3)."""
    x_hat = torch.lerp(fake, real, eps).requires_grad_(True)
    # D reads a non-leaf view of x_hat: torch's FLOP counter (its ModuleTracker) fails when
    # autograd.grad reaches a leaf tensor that is a module's input (seen with torch 2.13).
    (grad,) = torch.autograd.grad(d(x_hat.view_as(x_hat)).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class GanStep:
    """`d_steps` discriminator updates on the given real batches, then one generator update.

    `augment` is applied to every batch the discriminator sees, real and generated, in both updates
    (DiffAugment, Zhao et al. 2020): it must be differentiable so the generator's gradient passes through it.

    `g_sync` / `d_sync` are the networks whose gradients are averaged over data-parallel ranks (World.wrap; the
    networks themselves in one process). Each is called through its wrapper only in its own update: G without
    gradients in D's, D (frozen) plainly in G's and in the gradient penalty (DDP has no double backward).
    """

    g: nn.Module
    d: nn.Module
    g_sync: nn.Module
    d_sync: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    loss: str
    z_dim: int
    gp_weight: float
    noise: torch.Generator
    augment: Callable[[torch.Tensor], torch.Tensor] = identity

    def _z(self, n: int, device: torch.device) -> torch.Tensor:
        return draw_rows(lambda m: torch.randn(m, self.z_dim, generator=self.noise, device=device), n)

    def _eps(self, n: int, device: torch.device) -> torch.Tensor:
        """The gradient penalty's interpolation weights, (n, 1, 1, 1)."""
        return draw_rows(lambda m: torch.rand(m, 1, 1, 1, generator=self.noise, device=device), n)

    def __call__(self, reals: list[torch.Tensor], autocast) -> torch.Tensor:
        """Returns detached [loss_d, loss_g] of this step, shape (2,)."""
        for real in reals:  # (B, C, H, W) in [-1, 1]
            with autocast():
                with torch.no_grad():
                    fake = self.g(self._z(len(real), real.device))
                fake = self.augment(fake)
                real = self.augment(real)
                loss_d = discriminator_loss(self.loss, self.d_sync(real), self.d_sync(fake))
                if self.loss == "wgan-gp":
                    loss_d = loss_d + self.gp_weight * gradient_penalty(self.d, real, fake, self._eps(len(real),
                                                                                                   real.device))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
        self.d.requires_grad_(False)  # the G update needs gradients through D, not of D's weights
        with autocast():
            fake = self.augment(self.g_sync(self._z(len(reals[-1]), reals[-1].device)))
            loss_g = generator_loss(self.loss, self.d(fake))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.d.requires_grad_(True)
        return torch.stack([loss_d.detach(), loss_g.detach()]).float()


@dataclass
class GanRun:
    """Everything a GAN run trains or restores; `tensors()` / `restore()` map it to a checkpoint."""

    g: nn.Module
    d: nn.Module
    ema: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    noise: torch.Generator

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        t_g, m_g = optimizer_to_flat(self.opt_g, "opt_g")
        t_d, m_d = optimizer_to_flat(self.opt_d, "opt_d")
        tensors = {**prefixed(self.g.state_dict(), "g"), **prefixed(self.d.state_dict(), "d"),
                   **prefixed(self.ema.state_dict(), "ema"), **t_g, **t_d,
                   "rng.noise": self.noise.get_state(), "rng.torch": torch.get_rng_state()}
        return tensors, {"opt_g": m_g, "opt_d": m_d}

    def restore(self, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> None:
        for name, module in (("g", self.g), ("d", self.d), ("ema", self.ema)):
            load_state(module, unprefixed(tensors, name), f"checkpoint ({name})")
        optimizer_from_flat(self.opt_g, "opt_g", tensors, sidecar["opt_g"])
        optimizer_from_flat(self.opt_d, "opt_d", tensors, sidecar["opt_d"])
        self.noise.set_state(tensors["rng.noise"])
        torch.set_rng_state(tensors["rng.torch"])


def build_gan_run(cfg: RunConfig, image_shape: tuple[int, int, int], device: torch.device,
                  world: World = SINGLE) -> GanRun:
    seed_everything(cfg.train.seed)
    m, t = cfg.model, cfg.train
    g, d = build_gan(m.arch, m.size, z_dim=m.z_dim, image_shape=image_shape, loss=m.loss)
    g, d = sync_batchnorm(g.to(device), world), sync_batchnorm(d.to(device), world)
    betas = t.betas
    return GanRun(g=g, d=d, ema=make_ema(g, t.ema_decay),
                  opt_g=torch.optim.Adam(g.parameters(), lr=t.lr_g, betas=betas, fused=device.type == "cuda"),
                  opt_d=torch.optim.Adam(d.parameters(), lr=t.lr_d, betas=betas, fused=device.type == "cuda"),
                  noise=torch.Generator(device).manual_seed(t.seed))


def gan_step(cfg: RunConfig, run: GanRun, world: World = SINGLE) -> GanStep:
    m = cfg.model
    _, policy = parse_augment(cfg.data.augment)
    augment = functools.partial(diff_augment, policy=policy, generator=run.noise) if policy else identity
    return GanStep(run.g, run.d, world.wrap(run.g), world.wrap(run.d), run.opt_g, run.opt_d, m.loss, m.z_dim,
                   m.gp_weight, run.noise, augment)


class GanRecipe:
    """The GAN family for the shared loop: per step, `d_steps` real batches (augmented) and one GanStep, then the
    generator's EMA update."""

    log_names = ("loss_d", "loss_g")

    def __init__(self, cfg: RunConfig, splits: DataSplits, device: torch.device, world: World = SINGLE):
        self.cfg, self.splits, self.device = cfg, splits, device
        self.run = build_gan_run(cfg, splits.image_shape, device, world)
        self.step_fn = gan_step(cfg, self.run, world)
        self.stream = BatchStream(splits.train.x, cfg.train.batch_size, cfg.train.seed, world, device)
        self.real_ops, _ = parse_augment(cfg.data.augment)

    def step(self, step: int, autocast: Callable[[], Any], *, eager: bool = False) -> torch.Tensor:
        d_steps = self.cfg.train.d_steps
        reals = [augment_real(to_unit_range(self.stream.batch(step * d_steps + k)), self.real_ops, self.run.noise)
                 for k in range(d_steps)]
        losses = self.step_fn(reals, autocast)
        self.run.ema.update_parameters(self.run.g)
        return losses

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = self.run.tensors()
        return tensors, {**meta, "image_shape": self.splits.image_shape}

    def restore(self, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> None:
        self.run.restore(tensors, sidecar)

    def epochs(self, steps: int) -> float:
        return self.stream.epochs(steps * self.cfg.train.d_steps)

    def sampler(self):
        """The live EMA generator as a sampler (the one evaluation, samples and a checkpoint's loader use)."""
        from genscale.families.gan import GanSampler

        return GanSampler(self.run.ema.module, self.cfg.model.z_dim, self.device)

    def summary(self) -> dict[str, Any]:
        """What a study needs of the model and data: unique examples D and parameters N."""
        params_g, params_d = count_parameters(self.run.g), count_parameters(self.run.d)
        return {"dataset": self.splits.name, "dataset_version": self.splits.version,
                "data_size": len(self.splits.train), "params": params_g + params_d,
                "params_g": params_g, "params_d": params_d}


def gan_flops_per_step(cfg: RunConfig, image_shape: tuple[int, int, int]) -> int:
    """FLOPs of one training step of this config (counted on the CPU, as the loop counts its first step)."""
    device = torch.device("cpu")
    run = build_gan_run(cfg, image_shape, device)
    step_fn = gan_step(cfg, run)
    reals = [torch.zeros(cfg.train.batch_size, *image_shape) for _ in range(cfg.train.d_steps)]
    return count_flops(lambda: step_fn(reals, autocast_for(device, "fp32")))[1]
