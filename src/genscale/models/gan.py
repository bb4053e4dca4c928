"""GAN generators and discriminators: the fully connected GAN and DCGAN.

Sizes are presets (data, below) so a study can vary them by name. Images are (B, C, H, W) in [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genscale.errors import GenscaleError

PRESETS: dict[str, dict[str, dict[str, int]]] = {
    # gan-mlp: hidden widths width * 2**i for i < depth (Goodfellow et al. 2014 used 256-512-1024)
    "gan-mlp": {
        "tiny": {"width": 32, "depth": 2},
        "small": {"width": 128, "depth": 2},
        "base": {"width": 256, "depth": 3},
        "large": {"width": 512, "depth": 3},
    },
    # dcgan: base channel width, and extra 3x3 conv layers per resolution (0 is Radford et al. 2016)
    "dcgan": {
        "tiny": {"width": 8, "depth": 0},
        "small": {"width": 32, "depth": 0},
        "base": {"width": 64, "depth": 0},
        "large": {"width": 64, "depth": 1},
    },
}


def preset(arch: str, size: str) -> dict[str, int]:
    try:
        return PRESETS[arch][size]
    except KeyError:
        raise GenscaleError(f"model.size: '{size}' is not a preset of {arch} "
                            f"(choose from {', '.join(PRESETS.get(arch, {}))})") from None


class MLPGenerator(nn.Module):
    def __init__(self, z_dim: int, image_shape: tuple[int, int, int], width: int, depth: int):
        super().__init__()
        self.image_shape = image_shape
        dims = [z_dim] + [width * 2**i for i in range(depth)]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims, dims[1:], strict=False):
            layers += [nn.Linear(d_in, d_out), nn.LeakyReLU(0.2)]
        layers += [nn.Linear(dims[-1], math.prod(image_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.image_shape)  # (B, C, H, W)


class MLPDiscriminator(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], width: int, depth: int):
        super().__init__()
        dims = [math.prod(image_shape)] + [width * 2**i for i in reversed(range(depth))]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims, dims[1:], strict=False):
            layers += [nn.Linear(d_in, d_out), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)  # (B,) logits


def _halvings(side: int) -> int:
    """How many stride-2 stages take `side` down to a start of at most 7 (28 -> 7: 2; 32 -> 4: 3)."""
    k = 0
    while side % 2 == 0 and side > 7:
        side //= 2
        k += 1
    if k == 0:
        raise GenscaleError(f"dcgan: image side {side} must be even and above 7 (e.g. 28, 32, 64)")
    return k


class DCGenerator(nn.Module):
    """Radford et al. 2016: project, then stride-2 transposed convolutions with BatchNorm and ReLU."""

    def __init__(self, z_dim: int, image_shape: tuple[int, int, int], width: int, depth: int):
        super().__init__()
        c, h, w = image_shape
        k = _halvings(h)
        self.start = (width * 2 ** (k - 1), h >> k, w >> k)
        self.project = nn.Sequential(nn.Linear(z_dim, math.prod(self.start), bias=False),
                                     nn.BatchNorm1d(math.prod(self.start)), nn.ReLU(True))
        layers: list[nn.Module] = []
        ch = self.start[0]
        for i in range(k):
            out = c if i == k - 1 else ch // 2
            for _ in range(depth):
                layers += [nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
            layers.append(nn.ConvTranspose2d(ch, out, 4, 2, 1, bias=i == k - 1))
            layers += [nn.Tanh()] if i == k - 1 else [nn.BatchNorm2d(out), nn.ReLU(True)]
            ch = out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(-1, *self.start))  # (B, C, H, W)


class DCDiscriminator(nn.Module):
    """Stride-2 convolutions with LeakyReLU(0.2); BatchNorm except for WGAN-GP, whose penalty is per sample."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, depth: int, batch_norm: bool = True):
        super().__init__()
        c, h, w = image_shape
        k = _halvings(h)
        layers: list[nn.Module] = []
        ch_in, ch = c, width
        for i in range(k):
            layers.append(nn.Conv2d(ch_in, ch, 4, 2, 1, bias=i == 0 or not batch_norm))
            if i > 0 and batch_norm:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2, True))
            for _ in range(depth):
                layers += [nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.2, True)]
            ch_in, ch = ch, ch * 2
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch_in * (h >> k) * (w >> k), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)  # (B,) logits


def dcgan_init_(module: nn.Module) -> None:
    """Weights from N(0, 0.02), BatchNorm scales from N(1, 0.02), as in Radford et al. 2016."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def build_gan(arch: str, size: str, *, z_dim: int, image_shape: tuple[int, int, int],
              loss: str = "ns") -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for an arch and size preset."""
    p = preset(arch, size)
    if arch == "gan-mlp":
        return MLPGenerator(z_dim, image_shape, **p), MLPDiscriminator(image_shape, **p)
    g = DCGenerator(z_dim, image_shape, **p)
    d = DCDiscriminator(image_shape, **p, batch_norm=loss != "wgan-gp")
    dcgan_init_(g)
    dcgan_init_(d)
    return g, d


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
