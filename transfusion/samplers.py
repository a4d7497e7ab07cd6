"""Samplers that turn noise into latents, given a noise predictor: DDPM, DDIM, DPM-Solver++.

The step rules are diffusers' schedulers, fed this library's schedule (the cosine betas of
``diffusion.py``) so that training and sampling see the same alpha_bar. Two conventions
meet here:

- diffusers numbers training timesteps 0..T-1, with ``alphas_cumprod[k]`` the signal left
  after k + 1 noising steps; this library numbers them 1..T with ``alpha_bar[0] = 1`` for
  a clean image. Scheduler timestep k is our t = k + 1 (the perfect-oracle tests would
  fail on an off-by-one here).
- timesteps are spaced "trailing", so the first step starts at t = T, where alpha_bar is
  ~0 and the sample really is pure noise.

x0 clipping works for every sampler the same way: the predicted noise is replaced by the
noise that is consistent with the clamped x0 prediction, so DDPM's posterior mean, DDIM's
direction and DPM-Solver++'s data prediction all see the clamped x0.
"""

from __future__ import annotations

from typing import Callable

import torch

from transfusion.config import SAMPLER_STEPS, check_sampler
from transfusion.diffusion import Diffusion, randn

SAMPLERS = tuple(SAMPLER_STEPS)


def make_scheduler(name: str, diffusion: Diffusion):
    """A diffusers scheduler for ``name`` on this library's noise schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    check_sampler(name)
    alpha_bar = diffusion.alpha_bar
    betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).float().numpy()
    common = dict(num_train_timesteps=diffusion.T, trained_betas=betas, prediction_type="epsilon",
                  timestep_spacing="trailing")
    if name == "ddpm":  # ancestral, posterior variance beta_tilde (the paper's sampler)
        return DDPMScheduler(**common, variance_type="fixed_small", clip_sample=False)
    if name == "ddim":  # eta = 0: deterministic
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                       final_sigmas_type="zero", lower_order_final=True)


def clip_noise(eps: torch.Tensor, x: torch.Tensor, alpha_bar: float, clip: float) -> torch.Tensor:
    """The noise that makes the x0 prediction of (x_t, eps) land in [-clip, clip]."""
    a, s = alpha_bar ** 0.5, (1 - alpha_bar) ** 0.5
    x0 = ((x - s * eps) / a).clamp(-clip, clip)
    return (x - a * x0) / s


@torch.no_grad()
def sample(
    predict_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    diffusion: Diffusion,
    sampler: str,
    steps: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    clip: float = 0.0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Latents x_0 of ``shape`` (N, C, h, w), denoised from pure noise.

    Args:
        predict_noise: (x_t (N, C, h, w), t (N,) long in 1..T) -> eps (N, C, h, w).
        sampler: "ddpm" (ancestral; the paper uses 250 steps), "ddim" or "dpm++" (deterministic,
            20-50 steps).
        steps: denoising steps (model evaluations); a request's default is resolved by
            ``engine.Request.resolve`` (``config.SAMPLER_STEPS``).
        generator: one for the batch, or one per row: row i then draws exactly what it would
            draw alone with generator i (the initial noise and DDPM's per-step noise).
        clip: clamp the predicted x0 to [-clip, clip]; 0 (the default) turns it off. For pixels
            (range [-1, 1]) clip 1 helps: the cosine schedule's alpha_bar(T) is ~0, so unclamped
            first steps amplify the eps error by 1/sqrt(alpha_bar). Latents have no such range:
            clipping them biases every sample (``resolve_clip``).
        progress: show a progress bar over the steps.
    """
    check_sampler(sampler, steps, diffusion.T)
    scheduler = make_scheduler(sampler, diffusion)
    scheduler.set_timesteps(steps)
    x = randn(shape, generator).to(device)
    timesteps = scheduler.timesteps.tolist()
    if progress:
        from tqdm import tqdm

        timesteps = tqdm(timesteps, desc=f"{sampler} {steps} steps", leave=False)
    extra = {"generator": generator} if sampler == "ddpm" else {}
    for k in timesteps:
        t = k + 1
        eps = predict_noise(x, torch.full((shape[0],), t, dtype=torch.long, device=device)).float()
        if clip > 0:
            eps = clip_noise(eps, x, diffusion.alpha_bar[t].item(), clip)
        x = scheduler.step(eps, k, x, **extra).prev_sample
    return x
