"""The denoiser of the diffusion family: a U-Net that predicts the noise ε in x_t (Ho et al. 2020, appendix B).

Ronneberger et al. 2015's encoder-decoder with concatenated skips, as Ho et al. 2020 adapted it from PixelCNN++:
wide residual blocks (GroupNorm, SiLU, 3x3 conv) that read a sinusoidal embedding of the timestep, self-attention at
the coarse resolutions, stride-2 conv down, nearest-neighbour + conv up. For classifier-free guidance (Ho & Salimans
2022) a class embedding is added to the time embedding; its last row is the "null" label the model learns as
"unconditional". Sizes are presets (data, below) so a study can vary them by name. Images are (B, C, H, W) floats in
[-1, 1]; the side must be divisible by 2 ** (len(mults) - 1), e.g. 28 -> 14 -> 7 or 32 -> 16 -> 8.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genscale.errors import GenscaleError

PRESETS: dict[str, dict[str, dict[str, int | tuple[int, ...]]]] = {
    # channels: width at full resolution; mults: width multiplier per level (a level per resolution, 28 -> 14 -> 7);
    # blocks: residual blocks per level on the way down (one more on the way up, for the downsampler's skip);
    # attention: the levels with self-attention (2 is 7x7 at 28x28, 8x8 at 32x32); head_channels: channels per head;
    # groups: GroupNorm groups (Wu & He 2018; Ho et al. used 32 at width 128)
    "unet": {
        # tiny: tests; a training step at batch 32, 28x28 takes 0.05 s on one CPU core (0.1 s at 16 channels)
        "tiny": {"channels": 8, "mults": (1, 2, 2), "blocks": 1, "attention": (2,), "head_channels": 16, "groups": 4},
        "small": {"channels": 32, "mults": (1, 2, 2), "blocks": 2, "attention": (2,), "head_channels": 32,
                  "groups": 8},
        "base": {"channels": 64, "mults": (1, 2, 2), "blocks": 2, "attention": (1, 2), "head_channels": 32,
                 "groups": 32},
    },
}


def unet_preset(size: str) -> dict[str, int | tuple[int, ...]]:
    """The widths, depths and attention levels of a named size; an unknown name is a GenscaleError."""
    try:
        return PRESETS["unet"][size]
    except KeyError:
        raise GenscaleError(f"model.size: '{size}' is not a preset of unet "
                            f"(choose from {', '.join(PRESETS['unet'])})") from None


def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps (Vaswani et al. 2017 §3.5, as Ho et al. 2020 embed t): (B, dim).

    Half the features are sin(t / max_period ** (i / half)), half the matching cos, for i < half = dim // 2.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, 2 * half)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; + time embedding; GroupNorm, SiLU, dropout, conv; + skip (1x1 conv if widths differ)."""

    def __init__(self, ch_in: int, ch_out: int, *, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, ch_in), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, ch_out))
        self.out_layers = nn.Sequential(nn.GroupNorm(groups, ch_out), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(ch_out, ch_out, 3, padding=1))
        self.skip = nn.Conv2d(ch_in, ch_out, 1) if ch_in != ch_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)  # (B, ch_out, H, W)
        h = h + self.emb(emb)[:, :, None, None]  # the timestep (and label) shifts every channel
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, pre-GroupNorm, residual (Ho et al. 2020 used one head)."""

    def __init__(self, ch: int, *, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)  # (B, 3, nh, hs, HW)
        # (B, nh, HW, hs) each, contiguous in hs: what the fused CPU kernel needs; a strided view falls back to the
        # unfused math path, about 20x slower here (5.9 vs 104+ ms forward and backward at batch 64, 7x7, 32 channels)
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hs)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W) without checkerboard artefacts."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The residual blocks (each followed by attention, if this level has it) of one resolution."""

    def __init__(self, widths: list[tuple[int, int]], *, attention: bool, emb_dim: int, head_channels: int,
                 groups: int, dropout: float):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(i, o, emb_dim=emb_dim, groups=groups, dropout=dropout) for i, o in widths)
        self.attn = nn.ModuleList(AttentionBlock(o, head_channels=head_channels, groups=groups) if attention
                                  else nn.Identity() for _, o in widths)


class UNet(nn.Module):
    """ε_θ(x_t, t, y): the noise in x_t at timestep t (an integer in [0, T)), optionally given a class label y."""

    def __init__(self, image_shape: tuple[int, int, int], *, channels: int, mults: tuple[int, ...], blocks: int,
                 attention: tuple[int, ...], head_channels: int, groups: int, num_classes: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        c, h, w = image_shape
        factor = 2 ** (len(mults) - 1)
        if h % factor or w % factor:
            raise GenscaleError(f"unet: image side {h}x{w} must be divisible by {factor} "
                                f"({len(mults)} levels, e.g. 28 or 32)")
        if channels % groups:
            raise GenscaleError(f"unet: channels {channels} is not a multiple of groups {groups}")
        if num_classes is not None and num_classes < 1:
            raise GenscaleError(f"unet: num_classes {num_classes} must be a positive integer or None")
        self.image_shape = image_shape
        self.num_classes = num_classes
        self.channels = channels
        emb_dim = 4 * channels  # Ho et al. 2020: the time MLP widens to 4x the base width
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # row num_classes is the null label: "no label", trained by dropping labels (Ho & Salimans 2022)
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        kw = {"emb_dim": emb_dim, "head_channels": head_channels, "groups": groups, "dropout": dropout}

        self.conv_in = nn.Conv2d(c, channels, 3, padding=1)
        skips = [channels]  # widths of the activations the decoder concatenates, in push order
        ch = channels
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, m in enumerate(mults):
            widths = [(ch if j == 0 else channels * m, channels * m) for j in range(blocks)]
            self.down.append(Level(widths, attention=i in attention, **kw))
            ch = channels * m
            skips += [ch] * blocks
            if i < len(mults) - 1:
                self.downsample.append(Downsample(ch))
                skips.append(ch)

        # the bottleneck: res, attention, res (Ho et al. 2020)
        self.mid_res1 = ResBlock(ch, ch, emb_dim=emb_dim, groups=groups, dropout=dropout)
        self.mid_attn = AttentionBlock(ch, head_channels=head_channels, groups=groups)
        self.mid_res2 = ResBlock(ch, ch, emb_dim=emb_dim, groups=groups, dropout=dropout)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            widths = []
            for _ in range(blocks + 1):
                widths.append((ch + skips.pop(), channels * m))
                ch = channels * m
            self.up.append(Level(widths, attention=i in attention, **kw))
            if i > 0:
                self.upsample.append(Upsample(ch))

        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, c, 3, padding=1))

    @property
    def null_label(self) -> int:
        """The label index that means "unconditional": the last row of the label embedding."""
        if self.num_classes is None:
            raise GenscaleError("unet: this model has no labels (num_classes is None)")
        return self.num_classes

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The (B, 4 * channels) embedding of timesteps t (B,) and labels y (B,) in [0, num_classes]; None = null."""
        emb = self.time_mlp(timestep_embedding(t, self.channels))
        if self.label_emb is not None:
            if y is None:
                y = torch.full_like(t, self.num_classes, dtype=torch.long)
            emb = emb + self.label_emb(y)
        elif y is not None:
            raise GenscaleError("unet: labels given to a model built without num_classes")
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None) -> torch.Tensor:
        """ε prediction (B, C, H, W) for x_t (B, C, H, W), timesteps t ((B,) or one for all), labels y (B,) or None."""
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.embed(t, y)  # (B, E)

        h = self.conv_in(x)  # (B, ch, H, W)
        hs = [h]
        for i, level in enumerate(self.down):
            for res, attn in zip(level.res, level.attn, strict=True):
                h = attn(res(h, emb))
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, ch, H / 2**(i+1), W / 2**(i+1))
                hs.append(h)

        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb)), emb)

        for i, level in enumerate(self.up):
            for res, attn in zip(level.res, level.attn, strict=True):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), emb))  # concatenated skip (Ronneberger et al. 2015)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        return self.out(h)  # (B, C, H, W)


def build_unet(size: str, *, image_shape: tuple[int, int, int], num_classes: int | None,
               dropout: float = 0.0) -> UNet:
    """A UNet of a size preset for images (C, H, W); num_classes=None is unconditional, else labels 0..n-1 + null."""
    if not 0.0 <= dropout < 1.0:
        raise GenscaleError(f"model.dropout: {dropout} must be in [0, 1)")
    return UNet(image_shape, **unet_preset(size), num_classes=num_classes, dropout=dropout)
