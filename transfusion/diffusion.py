"""The noise processes: schedule, noising, targets and loss (samplers: ``samplers.py``).

Two objectives (``diffusion.objective``), one interface (``NoiseProcess``: ``sample_t``,
``draw``, ``q_sample``, ``target``, ``loss``), built by ``noise_process(cfg.diffusion)``:

- ``Diffusion`` (``ddpm``, the paper's): timesteps are integers 1..T (T = 1000),
  alpha_bar[0] = 1 being a clean image; epsilon target.
- ``Flow`` (``flow``, rectified flow as in SD3 / BAGEL): x_t = (1 - t) x_0 + t eps for
  continuous t in [0, 1], velocity target v = eps - x_0, t drawn logit-normal and shifted
  towards noise for larger images (SD3's t' = s t / (1 + (s - 1) t)).

The network sees t in model units: the DDPM timestep, or T * t for flow, embedded alike.
It never sees this module: it is handed noisy latents and t, and returns a prediction.

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


class NoiseProcess:
    """What both noise processes share: the draw of a training batch's times and noise."""

    T: int

    def sample_t(self, max_t: torch.Tensor, generator: torch.Generator | None = None,
                 latent_elements: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def draw(self, latents: list[torch.Tensor], max_t: torch.Tensor, generator=None
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The diffusion draw of a training batch (the only one: the loss reads it from the batch):
        per image its time under its cap (``sample_t`` of ``max_t[i : i + 1]``), (N,), and its
        noise, (C, h, w) like its latent. ``generator``: one for every image, or a list with
        image i's (``BatchBuilder``: its row's, so a row draws the same in any batch). Image by
        image, every time before any noise."""
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator] * len(latents)
        t = [self.sample_t(max_t[i : i + 1], g, lat.numel()) for i, (lat, g) in enumerate(zip(latents, gens))]
        noise = [torch.randn(lat.shape, generator=g) for lat, g in zip(latents, gens)]
        return (torch.cat(t) if t else torch.zeros(0, dtype=torch.long)), noise


class Diffusion(NoiseProcess):
    def __init__(self, timesteps: int = 1000, schedule: str = "cosine"):
        if schedule != "cosine":
            raise ValueError(f"unknown noise schedule {schedule!r}; only 'cosine' is implemented")
        self.T = timesteps
        self.alpha_bar = cosine_alpha_bar(timesteps)

    def sample_t(self, max_t: torch.Tensor, generator: torch.Generator | None = None,
                 latent_elements: int | None = None) -> torch.Tensor:
        """One timestep per image, uniform over 1..max_t[i]: (N,) long -> (N,) long."""
        u = torch.rand(max_t.shape, generator=generator, dtype=torch.float64)
        return (1 + (u * max_t.double()).floor()).long().clamp(max=max_t)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, for x0 (N, ...) and t (N,)."""
        ab = self.alpha_bar.to(x0.device)[t].float().view(-1, *[1] * (x0.dim() - 1))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network predicts: the noise eps (N, C, h, w)."""
        return noise

    @staticmethod
    def loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE per image: (N, C, h, w) x 2 -> (N,)."""
        return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift of flow times in [0, 1]: t' = s t / (1 + (s - 1) t); s > 1 moves
    mass towards noise (larger images need more of it)."""
    return shift * t / (1 + (shift - 1) * t)


class Flow(NoiseProcess):
    """Rectified flow: straight paths from the data (t = 0) to noise (t = 1).

    ``logit_mean`` / ``logit_std``: t = sigmoid(m + s z), z ~ N(0, 1) (SD3's logit-normal);
    ``shift``: a fixed timestep shift, or with ``shift_reference`` > 0 the resolution rule
    shift = sqrt(latent elements / shift_reference). Times are returned in model units (T t).
    """

    def __init__(self, timesteps: int = 1000, logit_mean: float = 0.0, logit_std: float = 1.0, shift: float = 1.0,
                 shift_reference: int = 0):
        self.T = timesteps
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self.fixed_shift, self.shift_reference = shift, shift_reference

    def shift(self, latent_elements: int | None) -> float:
        if self.shift_reference > 0 and latent_elements:
            return math.sqrt(latent_elements / self.shift_reference)
        return self.fixed_shift

    def sample_t(self, max_t: torch.Tensor, generator: torch.Generator | None = None,
                 latent_elements: int | None = None) -> torch.Tensor:
        """One time per image, logit-normal, shifted, then scaled into [0, max_t[i] / T] (the
        noise cap of image-first examples carries over as t <= cap): (N,) long -> (N,) float,
        in model units."""
        z = torch.randn(max_t.shape, generator=generator, dtype=torch.float64)
        u = shift_timesteps(torch.sigmoid(self.logit_mean + self.logit_std * z), self.shift(latent_elements))
        return (u * max_t.double()).float()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x0 + t eps, for x0 (N, ...) and model-unit t (N,)."""
        t = (t.float() / self.T).view(-1, *[1] * (x0.dim() - 1))
        return (1 - t) * x0 + t * noise

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The velocity v = eps - x0 (N, C, h, w)."""
        return noise - x0

    loss = staticmethod(Diffusion.loss)


def noise_process(cfg) -> NoiseProcess:
    """The run's noise process from its ``DiffusionConfig``."""
    if cfg.objective == "flow":
        return Flow(cfg.timesteps, cfg.flow_logit_mean, cfg.flow_logit_std, cfg.flow_shift, cfg.flow_shift_reference)
    return Diffusion(cfg.timesteps, cfg.schedule)
