"""The diffusion process (Ho et al. 2020, DDPM): noise schedules, the forward process q(x_t | x_0), the training loss,
and the reverse process with diffusers' DDPM and DDIM (Song et al. 2021) schedulers, with classifier-free guidance
(Ho & Salimans 2022). The denoiser is a separate network (models/unet.py).

Timestep indices run over t in {0, ..., T-1} as in diffusers and Ho et al.'s code: index t is the paper's t + 1, so
alphas_cumprod[t] = ᾱ_{t+1} = prod_{s <= t} (1 - beta_s), and "x_{-1}" (the output of the last step) is x_0.
Images are (B, C, H, W) floats in [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from genscale.errors import GenscaleError
from genscale.train.distributed import draw_rows

SCHEDULES = ("linear", "cosine")  # config `schedule`
SAMPLERS = ("ddpm", "ddim")  # config `sampler`
DIFFUSERS_BETA_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}  # the same betas, diffusers' name
SAMPLE_BATCH = 250


# --- noise schedules --------------------------------------------------------------------------------------------------

def linear_beta_schedule(timesteps: int) -> torch.Tensor:
    """beta_t rising linearly from 1e-4 to 0.02 (Ho et al. 2020 §4, for T = 1000): (T,) float32.

    For other T the endpoints stay 1e-4 and 0.02, exactly as diffusers' DDPMScheduler(beta_schedule="linear"), so
    a short chain adds less noise in total: ᾱ at the last step is 4e-5 for T = 1000 but about 0.6 for T = 50, far
    from the N(0, I) that sampling starts from. (lucidrains and Nichol & Dhariwal rescale both by 1000 / T; we do not,
    to match diffusers.) Use "cosine" for short chains.
    """
    return torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float32)


def cosine_alpha_bar(t_over_T: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """ᾱ(t) = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2): Nichol & Dhariwal 2021 eq. 17."""
    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return f(t_over_T) / f(torch.zeros_like(t_over_T))


def cosine_beta_schedule(timesteps: int, *, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = 1 - ᾱ(t+1) / ᾱ(t), clipped at 0.999 against the singularity at t = T (Nichol & Dhariwal 2021 §3.2):
    (T,) float32, diffusers' "squaredcos_cap_v2". Computed in float64, as diffusers does in Python floats."""
    u = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    a = cosine_alpha_bar(u)
    return (1 - a[1:] / a[:-1]).clamp(max=max_beta).to(torch.float32)


def beta_schedule(schedule: str, timesteps: int) -> torch.Tensor:
    """The (T,) betas of a named schedule, "linear" or "cosine"."""
    if schedule not in SCHEDULES:
        raise GenscaleError(f"schedule: '{schedule}' is not one of {', '.join(SCHEDULES)}")
    if timesteps < 1:
        raise GenscaleError(f"timesteps: {timesteps} must be a positive integer")
    return linear_beta_schedule(timesteps) if schedule == "linear" else cosine_beta_schedule(timesteps)


def alpha_bar(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = prod_{s <= t} (1 - beta_s) (Ho et al. 2020 §2), float32 like diffusers' alphas_cumprod: (T,)."""
    return torch.cumprod(1.0 - betas, dim=0)


def make_scheduler(sampler: str, *, schedule: str, timesteps: int = 1000) -> DDPMScheduler | DDIMScheduler:
    """A diffusers scheduler for the reverse process, on the same betas as `beta_schedule(schedule, timesteps)`.

    - prediction_type="epsilon": the UNet predicts ε (Ho et al. 2020's L_simple).
    - clip_sample=True: x̂0 is clipped to [-1, 1] at each step, as Ho et al.'s code (clip_denoised) and
      guided-diffusion do for pixel-space images; it keeps early steps, where x̂0 = (x_t - sqrt(1-ᾱ) ε) / sqrt(ᾱ)
      divides by a tiny sqrt(ᾱ), from leaving the data range. `sample` re-derives ε from the clipped x̂0 for DDIM
      (use_clipped_model_output), as guided-diffusion's ddim_sample does, so that DDIM with η = 1 over all T steps is
      DDPM's ancestral sampler step for step, clipping included.
    - timestep_spacing="trailing" (Lin et al. 2024, Table 2): the first step is t = T-1, where x_T ~ N(0, I) matches
      what the model was trained on, for any number of steps; "leading" (diffusers' default, Song et al.'s code)
      starts at T - T/steps, where for cosine and 10 steps ᾱ = 0.024, not pure noise. With all T steps every spacing
      gives T-1, ..., 0. DDIM's step goes from t to t - T // steps, which is the next trailing timestep only when
      steps divides T, so `check_steps` requires that for DDIM; DDPM steps to the next timestep in its list, any steps.
    - DDIM set_alpha_to_one=True and steps_offset=0: the last step goes to ᾱ = 1, i.e. returns x̂0, as DDPM's last
      step does; with an offset of 1 all T steps would ask for timestep T, which does not exist.
    """
    if sampler not in SAMPLERS:
        raise GenscaleError(f"sampler: '{sampler}' is not one of {', '.join(SAMPLERS)}")
    beta_schedule(schedule, timesteps)  # checks the name and T
    common = {"num_train_timesteps": timesteps, "beta_schedule": DIFFUSERS_BETA_SCHEDULE[schedule],
              "prediction_type": "epsilon", "clip_sample": True, "clip_sample_range": 1.0,
              "timestep_spacing": "trailing"}
    if sampler == "ddpm":
        return DDPMScheduler(**common, variance_type="fixed_small")  # σ² = β̃_t, Ho et al. eq. 7
    return DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=0)


def check_steps(scheduler: DDPMScheduler | DDIMScheduler, steps: int) -> None:
    """steps must be in [1, T], and for DDIM divide T (see `make_scheduler`); else a GenscaleError naming steps."""
    timesteps = scheduler.config.num_train_timesteps
    if not 1 <= steps <= timesteps:
        raise GenscaleError(f"steps: {steps} must be in [1, {timesteps}] (the training timesteps)")
    if isinstance(scheduler, DDIMScheduler) and timesteps % steps:
        divisors = [d for d in (10, 20, 25, 50, 100, 250, 500) if timesteps % d == 0]
        raise GenscaleError(f"steps: {steps} must divide timesteps {timesteps} for ddim (its step goes from t to "
                            f"t - T // steps), e.g. {', '.join(map(str, divisors or [timesteps]))}")


# --- forward process and training -------------------------------------------------------------------------------------

def extract(a: torch.Tensor, t: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    """a[t] for a (T,) table and (B,) timesteps, shaped (B, 1, ..., 1) to broadcast against x of x_shape."""
    return a.to(t.device).gather(0, t).reshape(t.shape[0], *([1] * (len(x_shape) - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, a draw from q(x_t | x_0) (Ho et al. 2020 eq. 4): (B, C, H, W)."""
    a = extract(alphas_cumprod, t, x0.shape).to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def diffusion_loss(unet: nn.Module, x0: torch.Tensor, y: torch.Tensor | None, *, alphas_cumprod: torch.Tensor,
                   generator: torch.Generator, p_uncond: float, denoiser: nn.Module | None = None) -> torch.Tensor:
    """Ho et al. 2020's L_simple: E ||ε - ε_θ(x_t, t, y)||² at t ~ Uniform{0..T-1}, ε ~ N(0, I); a scalar.

    With labels y (B,), each is replaced by the null label with probability p_uncond, so one network learns both
    ε(x_t, t, y) and ε(x_t, t) (Ho & Salimans 2022, Algorithm 1). Every draw (t, then ε, then the label dropout)
    comes from `generator`, on its own device, so a run resumed with the generator's state repeats bit for bit.
    `denoiser`: what is called to predict ε (unet's data-parallel wrapper); default unet itself.
    """
    b, gen_device = x0.shape[0], generator.device
    t = draw_rows(lambda m: torch.randint(0, alphas_cumprod.shape[0], (m,), generator=generator, device=gen_device),
                  b).to(x0.device)
    noise = draw_rows(lambda m: torch.randn((m, *x0.shape[1:]), generator=generator, device=gen_device,
                                            dtype=x0.dtype), b).to(x0.device)
    if y is not None:
        drop = draw_rows(lambda m: torch.rand(m, generator=generator, device=gen_device), b).to(x0.device) < p_uncond
        y = torch.where(drop, torch.full_like(y, unet.null_label), y)
    x_t = q_sample(x0, t, noise, alphas_cumprod)  # (B, C, H, W)
    return F.mse_loss((denoiser or unet)(x_t, t, y), noise)


# --- reverse process --------------------------------------------------------------------------------------------------

def classifier_free_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """ε̃ = ε_u + s (ε_c - ε_u), diffusers' guidance_scale s: s = 1 is the conditional model, s = 0 the unconditional
    one, s > 1 extrapolates past it. Ho & Salimans 2022 eq. 6 write (1 + w) ε_c - w ε_u, i.e. s = 1 + w."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def predict_noise(unet: nn.Module, x: torch.Tensor, t: torch.Tensor, *, labels: torch.Tensor | None,
                  guidance: float) -> torch.Tensor:
    """ε for x_t (B, C, H, W) at one timestep t: unconditional if labels is None or guidance = 0, conditional if
    guidance = 1 (one pass each), else classifier-free guidance with cond and uncond batched into one pass."""
    t_batch = t.to(x.device).expand(x.shape[0])
    if labels is None or guidance == 0:
        return unet(x, t_batch, None)
    if guidance == 1:
        return unet(x, t_batch, labels)
    null = torch.full_like(labels, unet.null_label)
    eps = unet(torch.cat([x, x]), torch.cat([t_batch, t_batch]), torch.cat([labels, null]))  # (2B, C, H, W)
    eps_cond, eps_uncond = eps.chunk(2)
    return classifier_free_guidance(eps_cond, eps_uncond, guidance)


def previous_sample(scheduler: DDPMScheduler | DDIMScheduler, eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor,
                    *, eta: float, generator: torch.Generator) -> torch.Tensor:
    """x_{t-1} from x_t and ε by the scheduler's update: DDPM's ancestral step (Ho et al. 2020 Algorithm 2), or DDIM's
    (Song et al. 2021 eq. 12) with noise weight η: 0 is deterministic, 1 is DDPM's posterior variance."""
    if isinstance(scheduler, DDIMScheduler):
        return scheduler.step(eps, t, x, eta=eta, use_clipped_model_output=True, generator=generator).prev_sample
    return scheduler.step(eps, t, x, generator=generator).prev_sample


@torch.no_grad()
def sample(unet: nn.Module, n: int, *, image_shape: tuple[int, int, int], scheduler: DDPMScheduler | DDIMScheduler,
           steps: int, eta: float = 0.0, guidance: float = 1.0, labels: torch.Tensor | None = None,
           generator: torch.Generator, device: torch.device | str, x_t: torch.Tensor | None = None) -> torch.Tensor:
    """n images (n, C, H, W) float in [-1, 1] on `device` by the reverse process in `steps` steps, from `x_t`
    (n, C, H, W) when given, else from x_T drawn from `generator`.

    labels (n,) in [0, num_classes) or None (unconditional); guidance is diffusers' guidance_scale (see
    `classifier_free_guidance`). eta is used by DDIM only. All noise (x_T and each step's) comes from `generator`, so
    a seed gives the same images; a CPU generator gives the same images on any device.
    """
    check_steps(scheduler, steps)
    was_training = unet.training
    unet.eval()  # dropout off
    if labels is not None:
        labels = labels.to(device)
    scheduler.set_timesteps(steps)
    if x_t is None:
        x_t = torch.randn((n, *image_shape), generator=generator, device=generator.device)  # x_T ~ N(0, I)
    x = x_t.to(device)
    for t in scheduler.timesteps:
        # 1. predict noise ε_θ(x_t, t) (guided, if labels are given)
        eps = predict_noise(unet, x, t, labels=labels, guidance=guidance)
        # 2. compute the previous sample x_{t-1}
        x = previous_sample(scheduler, eps, t, x, eta=eta, generator=generator)
    unet.train(was_training)
    return x.clamp(-1.0, 1.0)  # x̂0 is clipped already; this only trims rounding


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [0, 255], rounded and clamped as a saved PNG would be."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def sample_images(unet: nn.Module, n: int, *, image_shape: tuple[int, int, int],
                  scheduler: DDPMScheduler | DDIMScheduler, steps: int, eta: float = 0.0, guidance: float = 1.0,
                  labels: torch.Tensor | None = None, generator: torch.Generator, device: torch.device | str,
                  batch_size: int = SAMPLE_BATCH, x_t: torch.Tensor | None = None) -> torch.Tensor:
    """n images (n, C, H, W) uint8 on the CPU, sampled batch_size at a time (labels (n,) and x_t (n, C, H, W), the
    starting noise when given, sliced alike).

    The generator is shared by the batches in order, so the images depend on the seed and batch_size.
    """
    out = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        y = labels[i:i + b] if labels is not None else None
        x = sample(unet, b, image_shape=image_shape, scheduler=scheduler, steps=steps, eta=eta, guidance=guidance,
                   labels=y, generator=generator, device=device, x_t=None if x_t is None else x_t[i:i + b])
        out.append(to_uint8(x).cpu())
    return torch.cat(out) if out else torch.empty(0, *image_shape, dtype=torch.uint8)
