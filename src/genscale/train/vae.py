"""The VAE family's training: the negative ELBO, recon + beta * KL, in nats per image (models/vae.py), by Adam; and
the recipe the shared loop drives. The reparameterisation noise comes from a seeded generator whose state is
checkpointed, so a resumed run draws exactly the noise an uninterrupted one would."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from genscale.config import RunConfig
from genscale.data.datasets import DataSplits
from genscale.families.image import check_one_pass
from genscale.models.gan import count_parameters
from genscale.models.vae import SAMPLE_BATCH, VAE, _draw_normal, build_vae
from genscale.train.checkpoint import load_state, optimizer_from_flat, optimizer_to_flat, prefixed, unprefixed
from genscale.train.distributed import SINGLE, World
from genscale.train.machinery import BatchStream, autocast_for, count_flops, seed_everything


def build_model(cfg: RunConfig, image_shape: tuple[int, int, int]) -> VAE:
    m = cfg.model
    return build_vae(m.arch, m.size, image_shape=image_shape, latent_dim=m.latent_dim, likelihood=m.likelihood)


@dataclass
class VaeSampler:
    """z ~ N(0, I) from a seeded generator -> the decoder's mean image."""

    vae: VAE
    device: torch.device
    kind: Literal["image"] = "image"
    classes: int | None = None  # unconditional
    steps: int | None = None  # one pass of the decoder

    @torch.no_grad()
    def images(self, n: int, *, seed: int, label: int | None = None, steps: int | None = None) -> torch.Tensor:
        check_one_pass(label, steps)
        self.vae.eval()
        gen = torch.Generator(self.device).manual_seed(seed)
        return self.vae.sample_images(n, generator=gen, device=self.device).cpu()

    @torch.no_grad()
    def images_many(self, requests: Sequence[tuple[int, int]], *, label: int | None = None,
                    steps: int | None = None) -> list[torch.Tensor]:
        check_one_pass(label, steps)
        self.vae.eval()
        like = next(self.vae.parameters()).new_empty(0, device=self.device)
        # each request's z as `images` draws it (its own seeded generator), then one pass of the decoder
        z = torch.cat([_draw_normal((n, self.vae.latent_dim), torch.Generator(self.device).manual_seed(seed), like)
                       for n, seed in requests])  # (sum n, latent_dim)
        images = torch.cat([self.vae.mean_image(self.vae.decode(chunk)) for chunk in z.split(SAMPLE_BATCH)])
        return list(images.cpu().split([n for n, _ in requests]))


class VaeStep:
    """One Adam update on the negative ELBO of a batch; returns detached [loss, recon_nll, kl] (means, nats).
    `vae_sync`: the model whose gradients are averaged over data-parallel ranks (World.wrap)."""

    def __init__(self, vae: VAE, opt: torch.optim.Optimizer, beta: float, noise: torch.Generator,
                 vae_sync: torch.nn.Module | None = None):
        self.vae, self.opt, self.beta, self.noise = vae, opt, beta, noise
        self.vae_sync = vae_sync or vae

    def __call__(self, x: torch.Tensor, autocast: Callable[[], Any]) -> torch.Tensor:
        self.vae.train()
        with autocast():
            terms = self.vae_sync(x, beta=self.beta, generator=self.noise)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.opt.step()
        return torch.stack([terms["loss"].detach(), terms["recon_nll"].detach().mean(),
                            terms["kl"].detach().mean()]).float()


class VaeRecipe:
    """The VAE family for the shared loop: per step, one batch of uint8 images and one VaeStep."""

    log_names = ("loss", "recon_nll", "kl")

    def __init__(self, cfg: RunConfig, splits: DataSplits, device: torch.device, world: World = SINGLE):
        t = cfg.train
        self.cfg, self.splits, self.device = cfg, splits, device
        seed_everything(t.seed)
        self.vae = build_model(cfg, splits.image_shape).to(device)
        self.opt = torch.optim.Adam(self.vae.parameters(), lr=t.lr, betas=t.betas, fused=device.type == "cuda")
        self.noise = torch.Generator(device).manual_seed(t.seed)
        self.step_fn = VaeStep(self.vae, self.opt, cfg.model.beta, self.noise, world.wrap(self.vae))
        self.stream = BatchStream(splits.train.x, t.batch_size, t.seed, world, device)

    def step(self, step: int, autocast: Callable[[], Any], *, eager: bool = False) -> torch.Tensor:
        return self.step_fn(self.stream.batch(step), autocast)

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        t_opt, m_opt = optimizer_to_flat(self.opt, "opt")
        tensors = {**prefixed(self.vae.state_dict(), "vae"), **t_opt,
                   "rng.noise": self.noise.get_state(), "rng.torch": torch.get_rng_state()}
        return tensors, {"opt": m_opt, "image_shape": self.splits.image_shape}

    def restore(self, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> None:
        load_state(self.vae, unprefixed(tensors, "vae"), "checkpoint (vae)")
        optimizer_from_flat(self.opt, "opt", tensors, sidecar["opt"])
        self.noise.set_state(tensors["rng.noise"])
        torch.set_rng_state(tensors["rng.torch"])

    def epochs(self, steps: int) -> float:
        return self.stream.epochs(steps)

    def sampler(self) -> VaeSampler:
        return VaeSampler(self.vae, self.device)

    def summary(self) -> dict[str, Any]:
        """Unique examples D and parameters N (encoder + decoder: both are trained, as a GAN's G and D are)."""
        return {"dataset": self.splits.name, "dataset_version": self.splits.version,
                "data_size": len(self.splits.train), "params": count_parameters(self.vae),
                "latent_dim": self.cfg.model.latent_dim, "likelihood": self.cfg.model.likelihood}


def vae_flops_per_step(cfg: RunConfig, image_shape: tuple[int, int, int]) -> int:
    """FLOPs of one training step of this config (counted on the CPU, as the loop counts its first step)."""
    vae = build_model(cfg, image_shape)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.train.lr)
    step = VaeStep(vae, opt, cfg.model.beta, torch.Generator().manual_seed(0))
    x = torch.zeros(cfg.train.batch_size, *image_shape, dtype=torch.uint8)
    return count_flops(lambda: step(x, autocast_for(torch.device("cpu"), "fp32")))[1]
