"""The diffusion family: the forward process against its closed form, the schedules and samplers against diffusers
and the papers' formulas (Ho et al. 2020, Song et al. 2021, Nichol & Dhariwal 2021), classifier-free guidance at its
end points, the UNet's shapes and inputs, and a tiny training run (loss falls, repeats exactly)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from genscale.errors import GenscaleError
from genscale.models.diffusion import (
    DIFFUSERS_BETA_SCHEDULE,
    SCHEDULES,
    alpha_bar,
    beta_schedule,
    check_steps,
    classifier_free_guidance,
    diffusion_loss,
    make_scheduler,
    previous_sample,
    q_sample,
    sample,
    sample_images,
    to_uint8,
)
from genscale.models.unet import PRESETS, build_unet


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors here are tiny: a second thread costs more than it gains (the training test: 2.8 s vs 1.2 s on an idle
    2-core machine), and beside other busy processes OpenMP's spinning threads make it ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


Z = 5.0  # standard errors allowed for a Monte Carlo estimate (two-sided p ~ 6e-7 per comparison)


def x0_inside(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """An x0 in [-0.9, 0.9]: x_t built from it gives x̂0 = x0, so the scheduler's clip to [-1, 1] is a no-op."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 1.8 - 0.9


def noisy(x0: torch.Tensor, t: int, a: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, ε) with x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    return q_sample(x0, torch.full((x0.shape[0],), t), eps, a), eps


def in_float64(scheduler):
    """The scheduler with its float32 tables (the same values) upcast, so its step computes in float64: its
    coefficients are 0-dim tensors, which stay float32 even on float64 samples, and sqrt(1 - ᾱ_{t-1} - σ²) cancels
    to a few float32 ulps of 1 near t = T."""
    for name in ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod", "one"):
        if hasattr(scheduler, name):
            setattr(scheduler, name, getattr(scheduler, name).double())
    return scheduler


def tiny_unet(num_classes: int | None = 10, image_shape: tuple[int, int, int] = (1, 16, 16), seed: int = 0):
    torch.manual_seed(seed)
    return build_unet("tiny", image_shape=image_shape, num_classes=num_classes).eval()


# --- forward process and schedules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES)
def test_q_sample_has_the_mean_and_variance_of_q_xt_given_x0(schedule):
    a = alpha_bar(beta_schedule(schedule, 1000))
    x0 = torch.linspace(-1, 1, 8).reshape(1, 1, 2, 4)
    n = 200_000
    g = torch.Generator().manual_seed(0)
    for t in (0, 100, 500, 999):
        xt = q_sample(x0.expand(n, -1, -1, -1), torch.full((n,), t), torch.randn(n, 1, 2, 4, generator=g), a)
        var = 1 - a[t].item()
        mean_se, var_se = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))  # Gaussian: Var(s²) = 2σ⁴ / (n - 1)
        assert (xt.mean(0) - a[t].sqrt() * x0[0]).abs().max() < Z * mean_se, t
        assert (xt.var(0) - var).abs().max() < Z * var_se, t


@pytest.mark.parametrize("timesteps", [1000, 50])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_equal_diffusers(schedule, timesteps):
    ours = beta_schedule(schedule, timesteps)
    ref = DDPMScheduler(num_train_timesteps=timesteps, beta_schedule=DIFFUSERS_BETA_SCHEDULE[schedule])
    torch.testing.assert_close(ours, ref.betas, rtol=0, atol=1e-6)
    torch.testing.assert_close(alpha_bar(ours), ref.alphas_cumprod, rtol=0, atol=1e-6)
    for sampler in ("ddpm", "ddim"):  # the samplers step on the same ᾱ the loss trains on
        s = make_scheduler(sampler, schedule=schedule, timesteps=timesteps)
        torch.testing.assert_close(s.alphas_cumprod, alpha_bar(ours), rtol=0, atol=1e-6)


def test_bad_names_and_steps_are_errors_that_name_the_key():
    with pytest.raises(GenscaleError, match="schedule"):
        beta_schedule("quadratic", 1000)
    with pytest.raises(GenscaleError, match="sampler"):
        make_scheduler("euler", schedule="linear")
    with pytest.raises(GenscaleError, match="steps: 30 must divide"):
        check_steps(make_scheduler("ddim", schedule="linear"), 30)
    check_steps(make_scheduler("ddpm", schedule="linear"), 30)  # DDPM steps to the next listed timestep: any count
    with pytest.raises(GenscaleError, match="steps"):
        check_steps(make_scheduler("ddpm", schedule="linear"), 1001)


# --- samplers against the papers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddim_step_is_song_et_al_eq_12(schedule, eta):
    """x_{t-1} = sqrt(ᾱ_{t-1}) x̂0 + sqrt(1 - ᾱ_{t-1} - σ²) ε + σ z, x̂0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t),
    σ = η sqrt((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_{t-1}); ᾱ_{t-1} is the next timestep's, 1 after the last.

    Clipping stays on (make_scheduler's setting) and is a no-op: x_t is built from an x0 in [-0.9, 0.9], so x̂0 = x0.
    Computed in float64 on the schedule's float32 ᾱ (`in_float64`), so 1e-6 measures the formula, not float32
    rounding: near t = T, x̂0 divides by sqrt(ᾱ_t), 5e-5 for cosine."""
    s = in_float64(make_scheduler("ddim", schedule=schedule))
    s.set_timesteps(50)
    a = s.alphas_cumprod.double()
    ts = s.timesteps.tolist()
    for i in (0, 1, 25, 48, 49):
        t = ts[i]
        a_t, a_prev = a[t], a[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        x_t, eps = noisy(x0_inside((2, 1, 4, 4), seed=i).double(), t, a, seed=100 + i)
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)  # the step's draw
        got = previous_sample(s, eps, torch.tensor(t), x_t, eta=eta, generator=torch.Generator().manual_seed(7))

        x0_hat = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        want = a_prev.sqrt() * x0_hat + (1 - a_prev - sigma**2).sqrt() * eps + sigma * z
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=lambda m, t=t: f"t={t}: {m}")


def ddpm_posterior(x_t: torch.Tensor, eps: torch.Tensor, t: int, a: torch.Tensor):
    """q(x_{t-1} | x_t, x̂0) = N(μ̃_t, β̃_t I) at x̂0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t) (Ho et al. 2020 eq. 6-7):
    μ̃_t = sqrt(ᾱ_{t-1}) β_t / (1 - ᾱ_t) x̂0 + sqrt(α_t) (1 - ᾱ_{t-1}) / (1 - ᾱ_t) x_t,
    β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) β_t; ᾱ_{t-1} = 1 at t = 0. β_t is 1 - ᾱ_t / ᾱ_{t-1}, the schedule's beta but
    for the float32 rounding of the cumulative product (at t = 999 of cosine, ᾱ is 2e-9 and the two differ by 1e-5)."""
    a_t, a_prev = a[t], a[t - 1] if t > 0 else torch.tensor(1.0, dtype=a.dtype)
    beta = 1 - a_t / a_prev
    x0_hat = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    mean = a_prev.sqrt() * beta / (1 - a_t) * x0_hat + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x_t
    return mean, (1 - a_prev) / (1 - a_t) * beta


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddim_with_eta_1_over_all_steps_is_the_ddpm_posterior(schedule):
    """At each t, DDIM (η = 1, all T steps) and DDPM steps are N(μ̃_t, β̃_t): in closed form (float64, as above) and by
    200k float32 draws from each scheduler's step(), within Z standard errors of the mean and of the variance."""
    ddpm, ddim = make_scheduler("ddpm", schedule=schedule), make_scheduler("ddim", schedule=schedule)
    ddpm64, ddim64 = (in_float64(make_scheduler(sampler, schedule=schedule)) for sampler in ("ddpm", "ddim"))
    for s in (ddpm, ddim, ddpm64, ddim64):
        s.set_timesteps(1000)
    a = ddpm64.alphas_cumprod
    for t in (999, 500, 20, 1, 0):
        x_t, eps = noisy(x0_inside((1, 1, 2, 2), seed=t).double(), t, a, seed=t + 1)
        mean, var = ddpm_posterior(x_t, eps, t, a)
        # closed form: the DDIM step with zero noise is μ̃_t, and unit noise adds σ = sqrt(β̃_t)
        step = [ddim64.step(eps, t, x_t, eta=1.0, variance_noise=torch.full_like(x_t, z)).prev_sample for z in (0, 1)]
        torch.testing.assert_close(step[0], mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(step[1] - step[0], var.sqrt().expand_as(mean), rtol=0, atol=1e-6)
        # DDPM's step is the same function of its own draw z
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64) * (t > 0)
        torch.testing.assert_close(ddpm64.step(eps, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample,
                                   mean + var.sqrt() * z, rtol=0, atol=1e-6)
        if t == 0:
            continue  # β̃_0 = 0: no noise, both return x̂0
        # by sampling, in float32 as `sample` runs
        n = 200_000
        x_n, eps_n = x_t.float().expand(n, -1, -1, -1), eps.float().expand(n, -1, -1, -1)
        for s in (ddpm, ddim):
            x = previous_sample(s, eps_n, torch.tensor(t), x_n, eta=1.0, generator=torch.Generator().manual_seed(t))
            x = x.double()
            assert (x.mean(0) - mean[0]).abs().max() < Z * math.sqrt(var / n), (type(s).__name__, t)
            assert (x.var(0) / var - 1).abs().max() < Z * math.sqrt(2 / (n - 1)), (type(s).__name__, t)


def test_ddim_eta_1_and_ddpm_chains_agree_draw_for_draw():
    """All T = 1000 steps with the same generator seed and an ε that makes the clip to [-1, 1] bite: DDIM (η = 1,
    ε re-derived from the clipped x̂0) and DDPM ancestral sampling end at the same x_0."""
    ends = []
    for sampler in ("ddpm", "ddim"):
        s = make_scheduler(sampler, schedule="linear")
        s.set_timesteps(1000)
        g = torch.Generator().manual_seed(3)
        x = torch.randn(2, 1, 4, 4, generator=g)
        for t in s.timesteps:
            x = previous_sample(s, 0.5 * torch.tanh(x), t, x, eta=1.0, generator=g)
        ends.append(x)
    torch.testing.assert_close(ends[0], ends[1], rtol=0, atol=1e-4)
    assert ends[0].abs().max() <= 1.0


# --- classifier-free guidance and sampling ----------------------------------------------------------------------------

def test_guidance_formula_end_points():
    eps_c, eps_u = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(classifier_free_guidance(eps_c, eps_u, 0.0), eps_u)
    torch.testing.assert_close(classifier_free_guidance(eps_c, eps_u, 1.0), eps_c)
    torch.testing.assert_close(classifier_free_guidance(eps_c, eps_u, 3.0), 3 * eps_c - 2 * eps_u)  # (1+w) ε_c - w ε_u


def reference_sample(unet, n, *, scheduler, steps, eta, eps_fn, seed, image_shape=(1, 16, 16)):
    """The reverse process written out with ε from eps_fn(x, t): what `sample` must equal."""
    g = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn((n, *image_shape), generator=g)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = previous_sample(scheduler, eps_fn(x, t.expand(n)), t, x, eta=eta, generator=g)
    return x.clamp(-1, 1)


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
def test_guidance_1_is_conditional_0_is_unconditional_and_3_extrapolates(sampler, eta):
    unet, y, n = tiny_unet(), torch.tensor([0, 3, 7, 9]), 4
    s = make_scheduler(sampler, schedule="cosine")

    def run(guidance, labels):
        return sample(unet, n, image_shape=(1, 16, 16), scheduler=s, steps=5, eta=eta, guidance=guidance,
                      labels=labels, generator=torch.Generator().manual_seed(11), device="cpu")

    conditional = reference_sample(unet, n, scheduler=s, steps=5, eta=eta, seed=11, eps_fn=lambda x, t: unet(x, t, y))
    torch.testing.assert_close(run(1.0, y), conditional, rtol=0, atol=1e-5)
    assert torch.equal(run(0.0, y), run(1.0, None))  # any guidance without labels is unconditional
    unconditional = reference_sample(unet, n, scheduler=s, steps=5, eta=eta, seed=11,
                                     eps_fn=lambda x, t: unet(x, t, None))
    torch.testing.assert_close(run(0.0, y), unconditional, rtol=0, atol=1e-5)
    guided = reference_sample(unet, n, scheduler=s, steps=5, eta=eta, seed=11,
                              eps_fn=lambda x, t: 3 * unet(x, t, y) - 2 * unet(x, t, None))
    torch.testing.assert_close(run(3.0, y), guided, rtol=0, atol=1e-5)  # the batched cond + uncond pass
    assert not torch.allclose(run(3.0, y), conditional, atol=1e-3)


def test_sample_images_are_uint8_batched_and_seeded():
    unet, y = tiny_unet(), torch.arange(5)
    s = make_scheduler("ddim", schedule="linear")
    kw = {"image_shape": (1, 16, 16), "scheduler": s, "steps": 4, "guidance": 2.0, "device": "cpu"}
    whole = sample_images(unet, 5, labels=y, generator=torch.Generator().manual_seed(1), batch_size=5, **kw)
    assert whole.dtype == torch.uint8 and whole.shape == (5, 1, 16, 16)
    x = sample(unet, 5, labels=y, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(whole, to_uint8(x))
    again = sample_images(unet, 5, labels=y, generator=torch.Generator().manual_seed(1), batch_size=5, **kw)
    assert torch.equal(whole, again)
    batched = sample_images(unet, 5, labels=y, generator=torch.Generator().manual_seed(1), batch_size=2, **kw)
    assert batched.shape == whole.shape  # the generator is shared in order, so the pixels depend on batch_size


def test_to_uint8_rounds_and_clamps_like_a_png():
    x = torch.tensor([-2.0, -1.0, -0.999, 0.0, 0.5, 1.0, 3.0])
    assert to_uint8(x).tolist() == [0, 0, 0, 128, 191, 255, 255]


# --- the UNet ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("num_classes", [None, 10])
def test_unet_output_has_the_input_shape(image_shape, num_classes):
    unet = tiny_unet(num_classes, image_shape)
    x = torch.randn(3, *image_shape)
    y = torch.tensor([0, 4, 9]) if num_classes else None
    with torch.no_grad():
        assert unet(x, torch.tensor([0, 10, 999]), y).shape == x.shape
        assert unet(x, 5).shape == x.shape  # one timestep for the whole batch


def test_unet_reads_the_timestep_and_the_label():
    unet, x = tiny_unet(), torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([2, 2])
    with torch.no_grad():
        assert (unet(x, 10, y) - unet(x, 500, y)).abs().max() > 1e-3
        null = unet(x, 10, None)
        assert (unet(x, 10, y) - null).abs().max() > 1e-3
        assert torch.equal(unet(x, 10, torch.full((2,), unet.null_label)), null)  # y=None is the last row


def test_unet_build_errors():
    with pytest.raises(GenscaleError, match="model.size"):
        build_unet("huge", image_shape=(1, 28, 28), num_classes=None)
    with pytest.raises(GenscaleError, match="divisible by 4"):
        build_unet("tiny", image_shape=(1, 30, 30), num_classes=None)
    with pytest.raises(GenscaleError, match="labels"):
        tiny_unet(None)(torch.zeros(1, 1, 16, 16), 0, torch.tensor([1]))
    assert set(PRESETS["unet"]) == {"tiny", "small", "base"}


# --- training ---------------------------------------------------------------------------------------------------------

def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k is a bright square at position k of a 4x4 grid on a dark 16x16 background: (n, 1, 16, 16), (n,)."""
    y = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(seed))
    x = -torch.ones(n, 1, 16, 16)
    for i, k in enumerate(y.tolist()):
        r, c = divmod(k, 2)
        x[i, 0, 2 + 8 * r:6 + 8 * r, 2 + 8 * c:6 + 8 * c] = 1.0
    return x, y


def train_losses(steps: int = 30, seed: int = 0) -> list[float]:
    unet = tiny_unet(num_classes=4, seed=seed).train()
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    a = alpha_bar(beta_schedule("cosine", 1000))
    g = torch.Generator().manual_seed(seed)
    x, y = synthetic_images(16, seed)
    losses = []
    for _ in range(steps):
        loss = diffusion_loss(unet, x, y, alphas_cumprod=a, generator=g, p_uncond=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_lowers_the_loss_and_repeats_exactly():
    first, second = train_losses(), train_losses()
    assert first == second
    assert sum(first[-5:]) / 5 < 0.7 * sum(first[:5]) / 5, first


def test_loss_draws_only_from_its_generator():
    unet, a = tiny_unet(num_classes=4), alpha_bar(beta_schedule("linear", 1000))
    x, y = synthetic_images(4, 0)
    state = torch.get_rng_state()
    g = torch.Generator().manual_seed(5)
    saved = g.get_state()
    with torch.no_grad():
        loss = diffusion_loss(unet, x, y, alphas_cumprod=a, generator=g, p_uncond=0.5)
        assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
        g.set_state(saved)  # resuming from the generator's state repeats the loss bit for bit
        assert diffusion_loss(unet, x, y, alphas_cumprod=a, generator=g, p_uncond=0.5).item() == loss.item()
    assert loss.ndim == 0 and loss.item() > 0
