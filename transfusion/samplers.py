"""Samplers that turn noise into latents, given a predictor: for the ``ddpm`` objective (a noise
predictor) DDPM (ancestral, the paper's), DDIM (deterministic, or stochastic with ``eta``),
DPM-Solver++ (2nd-order multistep), its SDE variant (fresh noise each step, Lu et al. 2022) and
UniPC (predictor-corrector, Zhao et al. 2023); Euler and Heun for ``flow`` (a velocity predictor).

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

Flow sampling uses diffusers' ``FlowMatchEulerDiscreteScheduler`` / ``FlowMatchHeunDiscreteScheduler``,
whose sigma is our t (x_t = (1 - t) x0 + t eps) and whose timestep, sigma * T, is the model-unit
time the network was trained on; the run's timestep shift is the schedulers' ``shift``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable

import torch

from transfusion.config import Config
from transfusion.diffusion import Diffusion, Flow, randn

# each sampler's step count when neither a request nor the run's config names one
SAMPLER_STEPS = {"ddpm": 250, "ddim": 50, "dpm++": 25, "dpm++sde": 25, "unipc": 25, "euler": 25, "heun": 25}
# the samplers of each diffusion objective; the first is what sampling.sampler=auto means
OBJECTIVE_SAMPLERS = {"ddpm": ("ddpm", "ddim", "dpm++", "dpm++sde", "unipc"), "flow": ("euler", "heun")}
SAMPLERS = OBJECTIVE_SAMPLERS["ddpm"]  # noise predictors
FLOW_SAMPLERS = OBJECTIVE_SAMPLERS["flow"]  # velocity predictors


def default_sampler(objective: str) -> str:
    """What ``sampling.sampler=auto`` means: the first sampler of the objective."""
    return OBJECTIVE_SAMPLERS[objective][0]


def check_sampler(name: str, steps: int | None = None, timesteps: int = 1000, objective: str | None = None,
                  eta: float = 0.0) -> None:
    """A clear error for an unknown sampler name, one of the other objective, a step count it cannot
    take, or an ``eta`` (DDIM's noise share, in [0, 1]) given to another sampler.

    DDIM (diffusers' ``DDIMScheduler``) steps from t to t - T // steps whatever the grid:
    with a count that does not divide T, some steps would land on the wrong noise level.
    """
    if name not in SAMPLER_STEPS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_STEPS)}")
    if objective is not None and name not in OBJECTIVE_SAMPLERS[objective]:
        raise ValueError(f"sampler {name!r} does not sample diffusion.objective={objective}; use one of "
                         f"{', '.join(OBJECTIVE_SAMPLERS[objective])}")
    if not 0 <= eta <= 1 or (eta and name != "ddim"):
        raise ValueError(f"eta must be in [0, 1] and is DDIM's; got {eta} for {name}")
    if steps is None:
        return
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampling steps must be in 1..{timesteps}, got {steps}")
    if name == "ddim" and timesteps % steps:
        divisors = [d for d in range(1, timesteps + 1) if timesteps % d == 0]
        near = [max(d for d in divisors if d < steps), min(d for d in divisors if d > steps)]
        raise ValueError(f"ddim needs a step count that divides the {timesteps} training timesteps; {steps} does "
                         f"not (try {near[0]} or {near[1]}, or dpm++, which takes any count)")


def check_sampling(cfg: Config) -> None:
    """The run's ``sampling.*`` checked against its diffusion objective (at the start of training)."""
    s, d = cfg.sampling, cfg.diffusion
    if cfg.image.objective == "diffusion":
        check_sampler(default_sampler(d.objective) if s.sampler == "auto" else s.sampler, s.steps, d.timesteps,
                      d.objective)


def make_scheduler(name: str, diffusion: Diffusion):
    """A diffusers scheduler for ``name`` on this library's noise schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    check_sampler(name, objective="ddpm")
    alpha_bar = diffusion.alpha_bar
    betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).float().numpy()
    common = dict(num_train_timesteps=diffusion.T, trained_betas=betas, prediction_type="epsilon",
                  timestep_spacing="trailing")
    if name == "ddpm":  # ancestral, posterior variance beta_tilde (the paper's sampler)
        return DDPMScheduler(**common, variance_type="fixed_small", clip_sample=False)
    if name == "ddim":  # deterministic at eta = 0 (the step's argument)
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    multistep = dict(solver_order=2, final_sigmas_type="zero", lower_order_final=True)
    if name == "unipc":  # UniPC-bh2 on the data prediction, diffusers' recommended setting
        return UniPCMultistepScheduler(**common, **multistep, predict_x0=True, solver_type="bh2")
    algorithm = "sde-dpmsolver++" if name == "dpm++sde" else "dpmsolver++"
    return DPMSolverMultistepScheduler(**common, **multistep, algorithm_type=algorithm)


def make_flow_scheduler(name: str, flow: Flow, shift: float):
    """A diffusers flow-matching scheduler for ``name`` (euler | heun) with timestep ``shift``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    check_sampler(name, objective="flow")
    cls = FlowMatchEulerDiscreteScheduler if name == "euler" else FlowMatchHeunDiscreteScheduler
    return cls(num_train_timesteps=flow.T, shift=shift)


class ClampCount:
    """How often the x0 clamp fired while it was counted (``counting_clamps``): the share of
    predicted x0 values it moved, and of (sample, step) pairs where it moved any."""

    def __init__(self):
        self.values = self.values_clamped = self.steps = self.steps_clamped = 0

    def add(self, x0: torch.Tensor, clip: float) -> None:
        over = x0.abs() > clip
        self.values += over.numel()
        self.values_clamped += int(over.sum())
        per_step = over.flatten(1).any(1)
        self.steps += per_step.numel()
        self.steps_clamped += int(per_step.sum())

    def summary(self) -> dict:
        return {"x0_values_clamped": self.values_clamped / max(self.values, 1),
                "steps_clamped": self.steps_clamped / max(self.steps, 1)}


_CLAMPS: ContextVar[ClampCount | None] = ContextVar("transfusion_clamp_count", default=None)


@contextmanager
def counting_clamps():
    """``with counting_clamps() as count:`` sampling in this thread (and context) adds to ``count``."""
    count = ClampCount()
    token = _CLAMPS.set(count)
    try:
        yield count
    finally:
        _CLAMPS.reset(token)


def _clamped(x0: torch.Tensor, clip: float) -> torch.Tensor:
    count = _CLAMPS.get()
    if count is not None:
        count.add(x0, clip)
    return x0.clamp(-clip, clip)


def clip_velocity(v: torch.Tensor, x: torch.Tensor, t: float, clip: float) -> torch.Tensor:
    """The velocity that makes the x0 prediction x - t v of (x_t, v) land in [-clip, clip]."""
    x0 = _clamped(x - t * v, clip)
    return (x - x0) / t


def clip_noise(eps: torch.Tensor, x: torch.Tensor, alpha_bar: float, clip: float) -> torch.Tensor:
    """The noise that makes the x0 prediction of (x_t, eps) land in [-clip, clip]."""
    a, s = alpha_bar ** 0.5, (1 - alpha_bar) ** 0.5
    x0 = _clamped((x - s * eps) / a, clip)
    return (x - a * x0) / s


def _reporting(timesteps: list, label: str, progress):
    """The timesteps as they are (``progress`` False), under a tqdm bar (True), or calling
    ``progress(done, total)`` after each model evaluation (a callable: e.g. a web page's bar)."""
    if not progress:
        return timesteps
    if callable(progress):
        def report():
            for i, k in enumerate(timesteps):
                yield k
                progress(i + 1, len(timesteps))
        return report()
    from tqdm import tqdm

    return tqdm(timesteps, desc=label, leave=False)


@torch.no_grad()
def sample(
    predict_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    diffusion: Diffusion | Flow,
    sampler: str,
    steps: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    clip: float = 0.0,
    device: str | torch.device = "cpu",
    progress=False,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
    eta: float = 0.0,
) -> torch.Tensor:
    """Latents x_0 of ``shape`` (N, C, h, w), denoised from pure noise, or from ``init`` noised
    part of the way (SDEdit, Meng et al. 2022; diffusers' image-to-image ``strength``).

    Args:
        predict_noise: (x_t (N, C, h, w), t (N,) long in 1..T) -> eps (N, C, h, w); for a
            ``Flow``, (x_t, t (N,) float model-unit time T sigma) -> velocity (N, C, h, w).
        sampler: "ddpm" (ancestral; the paper uses 250 steps), "ddim" or "dpm++" (deterministic,
            20-50 steps), "dpm++sde" (stochastic), "unipc"; for a ``Flow``, "euler" or "heun"
            (two evaluations a step).
        steps: denoising steps (model evaluations); a request's default is resolved by
            ``engine.Request.resolve`` (``SAMPLER_STEPS``).
        generator: one for the batch, or one per row: row i then draws exactly what it would
            draw alone with generator i (the initial noise and DDPM's per-step noise).
        clip: clamp the predicted x0 to [-clip, clip]; 0 (the default) turns it off. The cosine
            schedule's alpha_bar(T) is 2.4e-9, so unclamped first steps amplify the eps error
            by 1 / sqrt(alpha_bar) = 20,000: clip 1 for pixels (their range), and for unit-spread
            latents a guard at 3 (``resolve_clip``), which costs an exact model little (a few
            latents lie beyond 3) and keeps an inexact one's samples from diverging.
        progress: True: a progress bar over the steps; a callable: called as ``progress(done, total)``
            after every step.
        init, strength: latents (N, C, h, w) to start from, and the share of the steps to run
            (0, 1]: sampling starts at the last ``round(strength * steps)`` timesteps, from ``init``
            noised to the first of them. 1 (the default) or no ``init``: pure noise.
        eta: DDIM's noise share (Song et al. 2021): 0 deterministic, 1 the ancestral posterior's.
    """
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if init is None:
        strength = 1.0
    if isinstance(diffusion, Flow):
        return _sample_flow(predict_noise, shape, diffusion, sampler, steps, generator, clip, device, progress,
                            init, strength)
    check_sampler(sampler, steps, diffusion.T, objective="ddpm", eta=eta)
    scheduler = make_scheduler(sampler, diffusion)
    scheduler.set_timesteps(steps)
    x = randn(shape, generator).to(device)
    timesteps = _tail(scheduler, strength)
    if strength < 1:  # the init noised to the first kept timestep (k + 1 in this library's numbering)
        a = diffusion.alpha_bar[timesteps[0] + 1].item()
        x = a ** 0.5 * init.to(device, x.dtype) + (1 - a) ** 0.5 * x
    timesteps = _reporting(timesteps, f"{sampler} {steps} steps", progress)
    extra = {"generator": generator} if sampler in ("ddpm", "dpm++sde") or eta else {}
    if eta:
        extra["eta"] = eta
    for k in timesteps:
        t = k + 1
        eps = predict_noise(x, torch.full((shape[0],), t, dtype=torch.long, device=device)).float()
        if clip > 0:
            eps = clip_noise(eps, x, diffusion.alpha_bar[t].item(), clip)
        x = scheduler.step(eps, k, x, **extra).prev_sample
    return x


def _tail(scheduler, strength: float) -> list:
    """The scheduler's timesteps from where sampling at ``strength`` starts (all of them at 1),
    with the scheduler told where it begins (its multistep state counts steps)."""
    timesteps = scheduler.timesteps.tolist()
    order = getattr(scheduler, "order", 1)  # Heun: t0, t1, t1, t2, t2, ...: step i starts at entry 2i
    if strength >= 1:
        return timesteps
    n = (len(timesteps) + order - 1) // order
    start = order * (n - max(1, round(strength * n)))
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return timesteps[start:]


def _sample_flow(predict_velocity, shape, flow: Flow, sampler: str, steps: int, generator, clip: float, device,
                 progress, init=None, strength: float = 1.0) -> torch.Tensor:
    """Integrate the flow ODE from t = 1 (noise) to 0 with diffusers' flow-matching schedulers."""
    check_sampler(sampler, steps, flow.T, objective="flow")
    scheduler = make_flow_scheduler(sampler, flow, flow.shift(math.prod(shape[1:])))
    scheduler.set_timesteps(steps)
    x = randn(shape, generator).to(device)
    timesteps = _tail(scheduler, strength)
    if strength < 1:  # x_t = (1 - t) x0 + t eps at the first kept time
        t = float(timesteps[0]) / flow.T
        x = (1 - t) * init.to(device, x.dtype) + t * x
    timesteps = _reporting(timesteps, f"{sampler} {steps} steps", progress)
    for k in timesteps:
        v = predict_velocity(x, torch.full((shape[0],), float(k), device=device)).float()
        if clip > 0:
            v = clip_velocity(v, x, float(k) / flow.T, clip)
        x = scheduler.step(v, k, x).prev_sample
    return x
