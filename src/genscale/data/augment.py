"""Image augmentation for GAN training: classical transforms of real images and DiffAugment.

Two families, named in one comma-separated spec (`parse_augment`):

- classical ops (`REAL_OPS`), applied to real images only, before the discriminator sees them. A GAN trained this
  way learns the augmented distribution, so strong transforms "leak" into the samples (Karras et al. 2020,
  "Training Generative Adversarial Networks with Limited Data"); these are kept mild for that reason.
- DiffAugment (`DIFF_OPS`, Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"),
  applied the same way to real and generated images inside the GAN step, differentiably, so the generator is
  trained through it and does not learn the transforms.

Every random number comes from the caller's `torch.Generator` (never the global RNG), so an augmented batch is
a pure function of (images, ops, generator state); a resumed run that restores the generator sees the same
batches. Parameters are drawn in float32 on the images' device and cast to the images' dtype, so the draws
do not depend on the precision the images are held in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genscale.errors import GenscaleError
from genscale.train.distributed import draw_rows

REAL_OPS = ("hflip", "rotate", "translate", "scale", "jitter")  # classical, on real images only
DIFF_OPS = ("diff-color", "diff-translation", "diff-cutout")  # DiffAugment, on real and fake in the GAN step
ALIASES = {"diffaugment": DIFF_OPS}  # Zhao et al.'s policy for unconditional GANs: color,translation,cutout

MAX_ROTATE_DEG = 10.0  # rotate: uniform angle in [-10, 10] degrees
MAX_TRANSLATE = 0.125  # translate: uniform shift in [-1/8, 1/8] of the side, x and y independently
MAX_ZOOM = 0.1  # scale: uniform zoom factor in [0.9, 1.1]
MAX_BRIGHTNESS = 0.2  # jitter: add U[-0.2, 0.2]
MAX_CONTRAST = 0.2  # jitter: scale deviation from the image mean by U[0.8, 1.2]
MAX_SATURATION = 0.2  # jitter: scale deviation from the per-pixel channel mean by U[0.8, 1.2] (C == 3 only)
DIFF_TRANSLATION_RATIO = 0.125  # diff-translation: integer shift of up to 1/8 of the side (Zhao et al. 2020)
DIFF_CUTOUT_RATIO = 0.5  # diff-cutout: a square of half the side (Zhao et al. 2020)


def parse_augment(spec: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """'hflip,translate,diffaugment' -> (real ops, diff ops), each in canonical order and without repeats.

    'none' or '' -> ((), ()); 'none' next to other names adds nothing. Whitespace around names and empty
    items ('hflip,,rotate') are ignored. An unknown name raises GenscaleError naming it and the valid ones.
    """
    valid = ("none", *REAL_OPS, *DIFF_OPS, *ALIASES)
    chosen: set[str] = set()
    for name in (part.strip() for part in spec.split(",")):
        if name in ("", "none"):
            continue
        if name not in valid:
            raise GenscaleError(f"data.augment: unknown augmentation {name!r} (choose from {', '.join(valid)})")
        chosen.update(ALIASES.get(name, (name,)))
    return tuple(op for op in REAL_OPS if op in chosen), tuple(op for op in DIFF_OPS if op in chosen)


def _check_ops(ops: tuple[str, ...], allowed: tuple[str, ...], what: str) -> None:
    unknown = [op for op in ops if op not in allowed]
    if unknown:
        raise GenscaleError(f"data.augment: {unknown[0]!r} is not a {what} op (choose from {', '.join(allowed)})")


def _uniform(n: int, low: float, high: float, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(n,) draws from U[low, high), made in float32 on x's device and cast to x's dtype; n counts a batch's rows
    (or k per row, contiguous), so a data-parallel rank draws for the global batch (`draw_rows`)."""
    u = draw_rows(lambda m: torch.rand(m, generator=generator, device=x.device, dtype=torch.float32), n)
    return (low + (high - low) * u).to(x.dtype)


def affine_theta(
    angle_deg: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor, *, height: int, width: int
) -> torch.Tensor:
    """The (B, 2, 3) `affine_grid` matrix of: zoom by `zoom` (B,), turn by `angle_deg` (B,), then move by
    `shift` (B, 2) = (x, y) as fractions of the width and height, all about the image centre.

    Positive x moves the content right, positive y down, and a positive angle turns it clockwise on screen.
    The rotation is done in pixel units, so it stays a rotation on non-square images. `affine_grid` maps
    output coordinates to input ones, so this is the inverse transform: p_in = R(-a) (p_out - t) / s, written
    in the normalised coordinates n = p / (W/2, H/2).
    """
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a) / zoom, torch.sin(a) / zoom  # (B,)
    linear = torch.stack(
        [torch.stack([cos, sin * (height / width)], dim=-1), torch.stack([-sin * (width / height), cos], dim=-1)],
        dim=-2,
    )  # (B, 2, 2)
    offset = -(linear @ (2 * shift).unsqueeze(-1))  # (B, 2, 1); the shift is 2*fraction in normalised units
    return torch.cat([linear, offset], dim=-1)  # (B, 2, 3)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample x (B, C, H, W) in [-1, 1] through `theta` (B, 2, 3): bilinear, and -1 (black, the background of
    Fashion-MNIST) where the output looks outside the image, by zero-padding x + 1 and subtracting 1."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def color_jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per image: brightness (add U[-0.2, 0.2]), contrast (scale the deviation from the image mean by
    U[0.8, 1.2]), and for C == 3 saturation (scale the deviation from the per-pixel channel mean by
    U[0.8, 1.2]); clamped to [-1, 1]. The colour jitter of Krizhevsky et al. 2012 / Howard 2013, in its
    torchvision ColorJitter form without hue."""
    b = len(x)
    x = x + _uniform(b, -MAX_BRIGHTNESS, MAX_BRIGHTNESS, x, generator).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = (x - mean) * _uniform(b, 1 - MAX_CONTRAST, 1 + MAX_CONTRAST, x, generator).view(b, 1, 1, 1) + mean
    if x.shape[1] == 3:
        grey = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        x = (x - grey) * _uniform(b, 1 - MAX_SATURATION, 1 + MAX_SATURATION, x, generator).view(b, 1, 1, 1) + grey
    return x.clamp(-1, 1)


def augment_real(x: torch.Tensor, ops: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """Classical augmentation of a batch of real images x (B, C, H, W) float in [-1, 1]; same shape, in [-1, 1].

    Each op is drawn independently per image, and applied in the order of `REAL_OPS` whatever the order of `ops`:
    hflip mirrors left-right with probability 0.5 (an exact flip, not a resampling); rotate (U[-10, 10] degrees),
    translate (U[-1/8, 1/8] of the side, x and y independently) and scale (zoom U[0.9, 1.1]) are composed into
    one affine matrix per image and applied with one bilinear resampling, filling with -1 from outside the image;
    jitter is `color_jitter`. Random numbers are drawn only for the ops asked for. ops == () returns x itself.
    """
    _check_ops(ops, REAL_OPS, "classical")
    if not ops:
        return x
    b, _, h, w = x.shape
    if "hflip" in ops:
        flip = draw_rows(lambda m: torch.rand(m, generator=generator, device=x.device), b) < 0.5  # (B,)
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    if any(op in ops for op in ("rotate", "translate", "scale")):
        f32 = torch.empty(0, device=x.device, dtype=torch.float32)  # the matrix is built in float32, even for bf16
        angle, shift, zoom = f32.new_zeros(b), f32.new_zeros(b, 2), f32.new_ones(b)  # (B,), (B, 2), (B,)
        if "rotate" in ops:
            angle = _uniform(b, -MAX_ROTATE_DEG, MAX_ROTATE_DEG, f32, generator)
        if "translate" in ops:
            shift = _uniform(2 * b, -MAX_TRANSLATE, MAX_TRANSLATE, f32, generator).view(b, 2)
        if "scale" in ops:
            zoom = _uniform(b, 1 - MAX_ZOOM, 1 + MAX_ZOOM, f32, generator)
        theta = affine_theta(angle, zoom, shift, height=h, width=w).to(x.dtype)  # (B, 2, 3)
        # bilinear weights sum to 1 only up to rounding: clamp so the output range is exact
        x = warp(x, theta).clamp(-1, 1)
    if "jitter" in ops:
        x = color_jitter(x, generator)
    return x


def diff_color(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DiffAugment's colour op (Zhao et al. 2020, sec. 3): per image, brightness x + (U[0, 1) - 0.5), then
    saturation (x - channel mean) * 2 U[0, 1) + channel mean (a no-op for C == 1), then contrast
    (x - mean over C, H, W) * (U[0, 1) + 0.5) + mean."""
    b = len(x)
    x = x + (_uniform(b, 0, 1, x, generator) - 0.5).view(b, 1, 1, 1)
    grey = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    x = (x - grey) * (2 * _uniform(b, 0, 1, x, generator)).view(b, 1, 1, 1) + grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * (_uniform(b, 0, 1, x, generator) + 0.5).view(b, 1, 1, 1) + mean


def shift_integer(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Move image i of x (B, C, H, W) down by dy[i] and right by dx[i] pixels (B,) long, filling the uncovered
    area with 0. A gather of x (differentiable in x, no resampling), so values are moved exactly."""
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h) - dy.view(b, 1)  # (B, H) source row of each output row
    cols = torch.arange(w, device=x.device).view(1, w) - dx.view(b, 1)  # (B, W)
    out = x.gather(2, rows.clamp(0, h - 1).view(b, 1, h, 1).expand(b, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1).view(b, 1, 1, w).expand(b, c, h, w))
    inside = ((rows >= 0) & (rows < h)).view(b, 1, h, 1) & ((cols >= 0) & (cols < w)).view(b, 1, 1, w)
    return torch.where(inside, out, torch.zeros((), dtype=x.dtype, device=x.device))


def diff_translation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DiffAugment's translation (Zhao et al. 2020, sec. 3): per image, an integer shift drawn uniformly from
    {-s, ..., s} with s = H/8 (W/8 for x) rounded half up, y and x independently; the uncovered area is 0."""
    b, _, h, w = x.shape
    sy, sx = int(h * DIFF_TRANSLATION_RATIO + 0.5), int(w * DIFF_TRANSLATION_RATIO + 0.5)
    dy = draw_rows(lambda m: torch.randint(-sy, sy + 1, (m,), generator=generator, device=x.device), b)
    dx = draw_rows(lambda m: torch.randint(-sx, sx + 1, (m,), generator=generator, device=x.device), b)
    return shift_integer(x, dy, dx)


def diff_cutout(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DiffAugment's cutout (Zhao et al. 2020, sec. 3; DeVries & Taylor 2017): per image, zero one square of
    half the side, H/2 x W/2 rounded half up, at a uniformly random centre, clipped at the borders.

    The centre is a pixel corner when the side is even (H + 1 choices) and a pixel centre when it is odd
    (H choices), so the square sits symmetrically: it is clipped to at least half its side at every border.
    """
    b, _, h, w = x.shape
    ch, cw = int(h * DIFF_CUTOUT_RATIO + 0.5), int(w * DIFF_CUTOUT_RATIO + 0.5)
    top = draw_rows(lambda m: torch.randint(0, h + 1 - ch % 2, (m, 1), generator=generator, device=x.device),
                    b) - ch // 2  # (B, 1)
    left = draw_rows(lambda m: torch.randint(0, w + 1 - cw % 2, (m, 1), generator=generator, device=x.device),
                     b) - cw // 2
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + ch)  # (B, H)
    in_cols = (cols >= left) & (cols < left + cw)  # (B, W)
    cut = in_rows.view(b, 1, h, 1) & in_cols.view(b, 1, 1, w)  # (B, 1, H, W)
    return torch.where(cut, torch.zeros((), dtype=x.dtype, device=x.device), x)


_DIFF_FNS = {"diff-color": diff_color, "diff-translation": diff_translation, "diff-cutout": diff_cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

    Applied the same way to real and generated batches x (B, C, H, W) in [-1, 1], with fresh per-image
    randomness, so gradients flow through it to the generator. The ops run in the order of `DIFF_OPS`
    (color -> translation -> cutout) whatever the order of `policy`: `diff_color`, `diff_translation`,
    `diff_cutout`. policy == () returns x itself.

    Deviation from the paper: the output is clamped to [-1, 1] so the discriminator only sees in-range images
    (only the colour op can leave the range; the gradient is zero where clamped).
    """
    _check_ops(policy, DIFF_OPS, "DiffAugment")
    if not policy:
        return x
    for op in DIFF_OPS:
        if op in policy:
            x = _DIFF_FNS[op](x, generator)
    return x.clamp(-1, 1)
