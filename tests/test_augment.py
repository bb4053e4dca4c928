import math

import pytest
import torch
from torch import nn

from genscale.data.augment import (
    DIFF_OPS,
    REAL_OPS,
    affine_theta,
    augment_real,
    diff_augment,
    parse_augment,
    shift_integer,
    warp,
)
from genscale.errors import GenscaleError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int, c: int, h: int, w: int | None = None, *, low: float = -1.0, high: float = 1.0, seed: int = 1):
    return low + (high - low) * torch.rand(b, c, h, w or h, generator=gen(seed))


def blob(b: int, size: int, cy: float, cx: float, sigma: float = 1.5) -> torch.Tensor:
    """(b, 1, size, size) black images with one Gaussian spot at (cy, cx): a centroid to follow."""
    r = torch.arange(size, dtype=torch.float32)
    spot = torch.exp(-((r.view(-1, 1) - cy) ** 2 + (r.view(1, -1) - cx) ** 2) / (2 * sigma**2))
    return (2 * spot - 1).expand(b, 1, size, size).clone()


def centroid(x: torch.Tensor) -> torch.Tensor:
    """(B, 2) = (row, col) centre of mass of x + 1 (B, 1, H, W)."""
    m = (x + 1).squeeze(1)
    r = torch.arange(x.shape[-1], dtype=x.dtype)
    total = m.sum(dim=(1, 2))
    return torch.stack([(m.sum(2) * r).sum(1) / total, (m.sum(1) * r).sum(1) / total], dim=1)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    # torch.testing.assert_close costs ~2 s of imports on its first call; this file stays fast without it
    assert a.shape == b.shape
    return (a.double() - b.double()).abs().max().item()


def per_image_line(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares y = slope * (x - mean x) + level per image; returns (slope, level - mean x, max residual)."""
    xf, yf = x.flatten(1), y.flatten(1)
    dx = xf - xf.mean(1, keepdim=True)
    slope = (dx * (yf - yf.mean(1, keepdim=True))).sum(1) / (dx * dx).sum(1)
    residual = yf - yf.mean(1, keepdim=True) - slope.unsqueeze(1) * dx
    return slope, yf.mean(1) - xf.mean(1), residual.abs().amax(1)


# --- parse_augment ---------------------------------------------------------------------------------------------


def test_parse_orders_canonically_expands_aliases_and_drops_repeats():
    assert parse_augment("translate, hflip ,diffaugment") == (("hflip", "translate"), DIFF_OPS)
    assert parse_augment("diff-cutout,diff-color,diff-cutout,jitter,jitter") == (
        ("jitter",),
        ("diff-color", "diff-cutout"),
    )
    assert parse_augment("diffaugment,diff-translation") == ((), DIFF_OPS)
    assert parse_augment(",".join(reversed(REAL_OPS))) == (REAL_OPS, ())


@pytest.mark.parametrize("spec", ["none", "", "  none  ", "none,none"])
def test_parse_none(spec):
    assert parse_augment(spec) == ((), ())


def test_parse_unknown_name_is_one_line_naming_it_and_the_choices():
    with pytest.raises(GenscaleError) as err:
        parse_augment("hflip,flipp")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("data.augment: unknown augmentation 'flipp'")
    for name in ("none", *REAL_OPS, *DIFF_OPS, "diffaugment"):
        assert name in message


def test_ops_of_the_wrong_family_are_refused():
    x = images(2, 1, 8)
    with pytest.raises(GenscaleError, match="diff-color"):
        augment_real(x, ("diff-color",), gen())
    with pytest.raises(GenscaleError, match="hflip"):
        diff_augment(x, ("hflip",), gen())


# --- both families: shape, range, determinism, identity --------------------------------------------------------

CASES = [(augment_real, (op,)) for op in REAL_OPS] + [(augment_real, REAL_OPS)]
CASES += [(diff_augment, (op,)) for op in DIFF_OPS] + [(diff_augment, DIFF_OPS)]
CASE_IDS = [f"{fn.__name__}:{'+'.join(ops) if len(ops) == 1 else 'all'}" for fn, ops in CASES]


@pytest.mark.parametrize("fn,ops", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("c,size", [(1, 28), (3, 32)])
def test_keeps_shape_and_range_and_changes_the_batch(fn, ops, c, size):
    x = images(16, c, size)
    y = fn(x, ops, gen())
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= -1 and y.max() <= 1
    assert not torch.equal(y, x)


@pytest.mark.parametrize("fn,ops", CASES, ids=CASE_IDS)
def test_pure_function_of_the_generator_state(fn, ops):
    x = images(8, 3, 16)
    global_state = torch.get_rng_state()
    first, again, other = fn(x, ops, gen(3)), fn(x, ops, gen(3)), fn(x, ops, gen(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is never drawn from


@pytest.mark.parametrize("fn", [augment_real, diff_augment])
def test_no_ops_returns_the_input_and_draws_nothing(fn):
    x, g = images(4, 1, 8), gen()
    state = g.get_state()
    assert fn(x, (), g) is x
    assert torch.equal(g.get_state(), state)


def test_float64_input_stays_float64_with_the_same_draws():
    x = images(4, 3, 16)
    y32 = augment_real(x, REAL_OPS, gen()), diff_augment(x, DIFF_OPS, gen())
    y64 = augment_real(x.double(), REAL_OPS, gen()), diff_augment(x.double(), DIFF_OPS, gen())
    for a, b in zip(y32, y64, strict=True):
        assert b.dtype == torch.float64
        assert max_error(b.float(), a) <= 1e-4


# --- classical ops ---------------------------------------------------------------------------------------------


def test_hflip_is_an_exact_mirror_of_about_half_the_images():
    x = images(64, 3, 8, 10)
    y = augment_real(x, ("hflip",), gen())
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(-1)).flatten(1).all(1)
    assert (same ^ mirrored).all()  # each image is exactly one of the two (random images are not symmetric)
    assert 16 < mirrored.sum() < 48


def test_affine_theta_conventions_are_exact_moves():
    x = images(1, 1, 8, 12)
    shift = torch.tensor([[3 / 12, -2 / 8]])  # 3 pixels right, 2 up
    y = warp(x, affine_theta(torch.zeros(1), torch.ones(1), shift, height=8, width=12))
    assert max_error(y[..., :6, 3:], x[..., 2:, :-3]) <= 1e-5
    black = -torch.ones(1, 1, 8, 12)
    assert max_error(y[..., 6:, :], black[..., 6:, :]) <= 1e-6  # filled with black
    assert max_error(y[..., :, :3], black[..., :, :3]) <= 1e-6

    square = images(1, 1, 9)
    turned = warp(square, affine_theta(torch.tensor([90.0]), torch.ones(1), torch.zeros(1, 2), height=9, width=9))
    assert max_error(turned, torch.rot90(square, k=-1, dims=(-2, -1))) <= 1e-5  # clockwise

    centre = blob(1, 32, 10.0, 20.0)  # the spot is 4 right and 6 up of the centre 15.5
    zoomed = warp(centre, affine_theta(torch.zeros(1), torch.tensor([1.1]), torch.zeros(1, 2), height=32, width=32))
    assert max_error(centroid(zoomed) - 15.5, 1.1 * (centroid(centre) - 15.5)) <= 0.02


def test_rotate_translate_scale_stay_within_their_ranges():
    x = blob(64, 32, 10.0, 20.0)
    offset = centroid(x) - 15.5  # (1, 2) from the image centre
    radius = offset.norm(dim=1)

    moved = centroid(augment_real(x, ("translate",), gen())) - centroid(x)  # (B, 2) in pixels
    assert moved.abs().max() <= 0.125 * 32 + 0.05
    assert moved.abs().max() > 0.1 * 32 and (moved > 0).any() and (moved < 0).any()

    zoomed = (centroid(augment_real(x, ("scale",), gen())) - 15.5).norm(dim=1) / radius
    assert zoomed.min() >= 0.9 - 1e-2 and zoomed.max() <= 1.1 + 1e-2
    assert zoomed.min() < 0.95 and zoomed.max() > 1.05

    turned = centroid(augment_real(x, ("rotate",), gen())) - 15.5
    assert max_error(turned.norm(dim=1), radius.expand(64)) <= 0.05  # rotation about the centre
    degrees = torch.rad2deg(torch.atan2(turned[:, 0], turned[:, 1]) - torch.atan2(offset[:, 0], offset[:, 1]))
    assert degrees.abs().max() <= 10.2 and degrees.abs().max() > 8
    assert (degrees > 1).any() and (degrees < -1).any()


def test_jitter_is_an_affine_map_per_image_within_its_ranges():
    grey = images(32, 1, 12, low=-0.2, high=0.2).expand(32, 3, 12, 12)  # equal channels: saturation is a no-op
    y = augment_real(grey, ("jitter",), gen())
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    slope, brightness, residual = per_image_line(grey[:, :1], y[:, :1])
    assert residual.max() < 1e-5
    assert slope.min() >= 0.8 - 1e-5 and slope.max() <= 1.2 + 1e-5 and slope.max() - slope.min() > 0.2
    assert brightness.abs().max() <= 0.2 + 1e-5 and brightness.max() - brightness.min() > 0.2

    colour = images(32, 3, 12, low=-0.2, high=0.2)
    chroma = colour - colour.mean(1, keepdim=True)
    y = augment_real(colour, ("jitter",), gen())
    ratio = (y - y.mean(1, keepdim=True)).flatten(1).norm(dim=1) / chroma.flatten(1).norm(dim=1)
    assert ratio.min() >= 0.8 * 0.8 - 1e-4 and ratio.max() <= 1.2 * 1.2 + 1e-4  # contrast times saturation


# --- DiffAugment ops -------------------------------------------------------------------------------------------


def reference_shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    rows_to, cols_to = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    rows_from, cols_from = slice(max(-dy, 0), h - max(dy, 0)), slice(max(-dx, 0), w - max(dx, 0))
    out[..., rows_to, cols_to] = x[..., rows_from, cols_from]
    return out


def test_diff_translation_moves_a_bright_pixel_by_an_integer_offset_and_fills_with_zero():
    x = -torch.ones(64, 2, 28, 28)
    x[:, :, 14, 13] = 1.0
    y = diff_augment(x, ("diff-translation",), gen())
    offsets = set()
    for image_in, image_out in zip(x, y, strict=True):
        (row, col) = (image_out[0] == 1).nonzero()[0].tolist()
        assert (image_out[0] == 1).sum() == 1
        dy, dx = row - 14, col - 13
        assert torch.equal(image_out, reference_shift(image_in, dy, dx))
        offsets.add((dy, dx))
    ys, xs = {dy for dy, _ in offsets}, {dx for _, dx in offsets}
    assert ys <= set(range(-4, 5)) and xs <= set(range(-4, 5))  # 28 / 8 = 3.5, rounded up to 4
    assert {-4, 4} <= ys and {-4, 4} <= xs


def test_shift_integer_matches_the_reference_shift():
    x = images(3, 2, 7, 9)
    dy, dx = torch.tensor([2, -3, 0]), torch.tensor([-1, 4, 0])
    y = shift_integer(x, dy, dx)
    for i in range(3):
        assert torch.equal(y[i], reference_shift(x[i], int(dy[i]), int(dx[i])))


def test_diff_cutout_zeroes_one_clipped_square_of_half_the_side():
    x = images(64, 3, 28, 20, low=0.1, high=1.0)  # no zeros of its own
    y = diff_augment(x, ("diff-cutout",), gen())
    whole = 0
    for image_in, image_out in zip(x, y, strict=True):
        cut = image_out == 0  # (C, H, W)
        assert torch.equal(cut[0], cut[1]) and torch.equal(cut[0], cut[2])  # the same square in every channel
        assert torch.equal(image_out[~cut], image_in[~cut])  # the rest is untouched
        rows, cols = cut[0].any(1).nonzero().flatten(), cut[0].any(0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert cut[0].sum() == height * width  # a rectangle ...
        assert rows[-1] - rows[0] + 1 == height and cols[-1] - cols[0] + 1 == width  # ... in one piece
        assert 7 <= height <= 14 and 5 <= width <= 10  # clipped to at least half at the borders
        touches_y = rows[0] == 0 or rows[-1] == 27
        touches_x = cols[0] == 0 or cols[-1] == 19
        assert touches_y or height == 14
        assert touches_x or width == 10
        whole += height == 14 and width == 10
    assert whole > 0


def test_diff_color_is_brightness_and_contrast_on_one_channel():
    x = images(32, 1, 10, low=-0.1, high=0.1)  # small enough that the clamp never bites
    slope, brightness, residual = per_image_line(x, diff_augment(x, ("diff-color",), gen()))
    assert residual.max() < 1e-5
    assert slope.min() >= 0.5 - 1e-5 and slope.max() <= 1.5 + 1e-5 and slope.max() - slope.min() > 0.5
    assert brightness.min() >= -0.5 - 1e-5 and brightness.max() <= 0.5 + 1e-5 and brightness.max() > 0.2


@pytest.mark.parametrize("op", DIFF_OPS)
def test_diff_ops_pass_gradcheck(op):
    c = 3 if op == "diff-color" else 1  # three channels so saturation is exercised
    x = images(2, c, 5, low=-0.2, high=0.2).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: diff_augment(t, (op,), gen(5)), (x,))


def test_gradients_reach_the_generator_through_diff_augment():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(8, 3 * 12 * 12), nn.Tanh(), nn.Unflatten(1, (3, 12, 12)))
    d = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 1))
    z = torch.randn(16, 8, generator=gen(2))
    d(diff_augment(g(z), DIFF_OPS, gen())).mean().backward()
    for name, p in g.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert math.isfinite(p.grad.abs().sum().item()), name
