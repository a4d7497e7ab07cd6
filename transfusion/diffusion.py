"""The noise process: schedule, noising, and the epsilon target and loss (samplers: ``samplers.py``).

Timesteps are integers 1..T (T = 1000), alpha_bar[0] = 1 being a clean image. The network
never sees this module: it is handed noisy latents and t, and returns a noise prediction.

Images that sit in the context clean (a finished image, one given for captioning or
continuation) are fed at ``CONTEXT_T`` = 1, the smallest timestep training draws, not at
t = 0: the model has only ever seen t in 1..T, and x_1 differs from x_0 by noise of std
sqrt(1 - alpha_bar[1]) ~ 0.006, so a clean latent at t = 1 is an input it was trained on.
(Drawing t = 0 in training instead would spend loss on an epsilon the input says nothing of.)
"""

from __future__ import annotations

import math

import torch

CONTEXT_T = 1  # the timestep at which clean context images are fed (see above)


def randn(shape: tuple[int, ...], generator=None) -> torch.Tensor:
    """Standard normal noise on the CPU; with a list of generators, row i comes from generator i
    (so a batch draws exactly what its rows would draw one by one)."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(shape[1:], generator=g) for g in generator])
    return torch.randn(shape, generator=generator)


def cosine_alpha_bar(T: int, s: float = 0.008) -> torch.Tensor:
    """alpha_bar(t) for t = 0..T (Nichol & Dhariwal), float64 of shape (T + 1,)."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    # clip each step's beta at 0.999 as in the paper that introduced the schedule
    betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


class Diffusion:
    def __init__(self, timesteps: int = 1000, schedule: str = "cosine"):
        if schedule != "cosine":
            raise ValueError(f"unknown noise schedule {schedule!r}; only 'cosine' is implemented")
        self.T = timesteps
        self.alpha_bar = cosine_alpha_bar(timesteps)

    def sample_t(self, max_t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One timestep per image, uniform over 1..max_t[i]: (N,) long -> (N,) long."""
        u = torch.rand(max_t.shape, generator=generator, dtype=torch.float64)
        return (1 + (u * max_t.double()).floor()).long().clamp(max=max_t)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, for x0 (N, ...) and t (N,)."""
        ab = self.alpha_bar.to(x0.device)[t].float().view(-1, *[1] * (x0.dim() - 1))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    @staticmethod
    def loss(noise_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Epsilon MSE per image: (N, C, h, w) x 2 -> (N,)."""
        return (noise_pred.float() - noise.float()).pow(2).flatten(1).mean(1)
