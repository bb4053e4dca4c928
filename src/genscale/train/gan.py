"""The GAN objective: losses named after their papers and one training step (D updates, then G)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
    """

    g: nn.Module
    d: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    loss: str
    z_dim: int
    gp_weight: float
    noise: torch.Generator
    augment: Callable[[torch.Tensor], torch.Tensor] = identity

    def _z(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=self.noise, device=device)

    def __call__(self, reals: list[torch.Tensor], autocast) -> torch.Tensor:
        """Returns detached [loss_d, loss_g] of this step, shape (2,)."""
        for real in reals:  # (B, C, H, W) in [-1, 1]
            with autocast():
                fake = self.augment(self.g(self._z(len(real), real.device)).detach())
                real = self.augment(real)
                loss_d = discriminator_loss(self.loss, self.d(real), self.d(fake))
                if self.loss == "wgan-gp":
                    eps = torch.rand(len(real), 1, 1, 1, generator=self.noise, device=real.device)
                    loss_d = loss_d + self.gp_weight * gradient_penalty(self.d, real, fake, eps)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
        self.d.requires_grad_(False)  # the G update needs gradients through D, not of D's weights
        with autocast():
            fake = self.augment(self.g(self._z(len(reals[-1]), reals[-1].device)))
            loss_g = generator_loss(self.loss, self.d(fake))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.d.requires_grad_(True)
        return torch.stack([loss_d.detach(), loss_g.detach()]).float()
