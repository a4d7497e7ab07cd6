"""Text to image as a policy: a sampler whose every step has an exact log-probability.

    policy = ImagePolicy(model, tokenizer, autoencoder, cfg)
    rollout = policy.rollout(model, prompts, generator)             # no gradient: what was sampled
    log_prob, mean, std = policy.step(model, rollout, k)           # with gradient: step k's density

The sampler is DDPM's ancestral posterior over a strided schedule (as DDPO samples, Black et al.
2023, arXiv 2305.13301): from t_0 = T down to t_K = 0 in K equal strides, each step draws

    x_{t_{k+1}} ~ N(mu_theta(x_{t_k}), sigma_k^2 I),
    mu = sqrt(a_s) beta / (1 - a_t) x0_hat + sqrt(a_t / a_s) (1 - a_s) / (1 - a_t) x_t,
    sigma^2 = (1 - a_s) / (1 - a_t) beta,   beta = 1 - a_t / a_s,

with a = alpha_bar at t = t_k and s = t_{k+1}, x0_hat the model's prediction of the clean
latents (clamped as the run samples, ``sampling.clip_sample``), and classifier-free guidance on
the noise prediction when asked. It is the library's ``ddpm`` sampler with K steps (the
diffusers DDPM step, posterior variance "fixed_small"). The last step (s = 0) has sigma = 0: it
is the deterministic x0_hat and carries no log-probability, so K - 1 steps are trained on.

A flow-matching run (x_t = (1 - t) x0 + t eps, velocity v = eps - x0) samples the SDE that
shares the flow ODE's marginals (Flow-GRPO, Liu et al. 2025, arXiv 2505.05470): from t to
s = t - h (times shifted as the run samples),

    x_s ~ N(x_t - h [v + sigma_t^2 / (2 t) (x_t + (1 - t) v)], sigma_t^2 h I),
    sigma_t = a sqrt(t / (1 - t))     (a: ``posttrain.flow_noise``; at t = 1 the next time's),

which with a = 0 is the Euler step of the ODE; the last step lands on x0_hat = x_t - t v.

The model reads each caption as training showed it, ``<bos> caption <boi> patches``, and the
unconditional branch ``<bos> <boi> patches``, every patch of the image at once. An edit
(a prompt with a ``source``) is read as ``<bos> <boi> source <eoi> instruction <boi> patches``,
the source clean (and at the image layers too, for a run with ``image.edit_reference``); its
unconditional branch is ``<bos> <boi> patches`` (zeros at the image layers), as ``transfusion edit``
guides with one scale on the source and the instruction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from transfusion.batch import ImageGroup
from transfusion.data.document import Image, Text
from transfusion.data.packing import CONTEXT_IMAGE, layout, pack
from transfusion.diffusion import CONTEXT_T, Flow, noise_process, randn, shift_timesteps
from transfusion.engine.settings import resolve_clip
from transfusion.posttrain.objective import clipped_objective
from transfusion.posttrain.rewards import judged_images, score_all
from transfusion.samplers import clip_noise, clip_velocity
from transfusion.visualize import image_grid


class Prompt(str):
    """A caption, or an edit's instruction, as a ``str``, with what the dataset knows of it:
    ``source`` (the image an edit starts from, pixels (3, H, W) in [-1, 1]) and ``meta`` (the
    scene or edit behind it, which exact rewards read)."""

    source: torch.Tensor | None
    meta: dict

    def __new__(cls, text: str, source: torch.Tensor | None = None, meta: dict | None = None):
        out = super().__new__(cls, text)
        out.source, out.meta = source, dict(meta or {})
        return out


@dataclass
class Rows:
    """Packed model inputs of one new image per row: (R, L) tokens, positions, doc and image ids,
    the (R, n) flat positions of each row's new patches, and the edits' clean sources (an image
    group, and their latents for the image layers of an ``edit_reference`` run), or None."""

    tokens: torch.Tensor
    positions: torch.Tensor
    doc_ids: torch.Tensor
    image_ids: torch.Tensor
    index: torch.Tensor
    context: ImageGroup | None = None
    reference: torch.Tensor | None = None


@dataclass
class Rollout:
    """What a batch of rows sampled: the prompts, the latents before and after every step,
    and each stochastic step's log-probability under the sampling model (and the reference
    model's mean there, for the KL term)."""

    prompts: list[str]
    latents: torch.Tensor  # (K + 1, N, C, h, w): x_{t_0} (noise) .. x_{t_K} (the sample)
    log_probs: torch.Tensor  # (K - 1, N): log N(x_{t_{k+1}}; mu, sigma^2) summed over the latent
    reference_means: torch.Tensor | None  # (K - 1, N, C, h, w), or None without a KL term
    rows: Rows  # the model inputs it was sampled with: the update reads the same

    @property
    def samples(self) -> torch.Tensor:
        return self.latents[-1]


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mean, std^2 I) of each row (N, ...) -> (N,), summed over the other dimensions."""
    d = x[0].numel()
    return (-((x - mean) ** 2).flatten(1).sum(1) / (2 * std**2) - d * (math.log(std) + 0.5 * math.log(2 * math.pi)))


class ImagePolicy:
    """Sampling and step densities of a diffusion run's text-to-image path."""

    def __init__(self, model, tokenizer, autoencoder, cfg, steps: int | None = None, guidance: float | None = None):
        if cfg.image.objective != "diffusion":
            raise ValueError("post-training samples images by diffusion: it needs a run with image.objective=diffusion")
        self.tokenizer, self.autoencoder = tokenizer, autoencoder
        self.num_patches = model.num_patches
        self.edit_reference = cfg.image.edit_reference
        self.diffusion = noise_process(cfg.diffusion)
        self.flow = isinstance(self.diffusion, Flow)
        pt = cfg.posttrain
        self.steps = steps or pt.sample_steps
        self.guidance = pt.guidance if guidance is None else guidance
        self.flow_noise = pt.flow_noise
        self.clip = resolve_clip(cfg.sampling.clip_sample, autoencoder)
        self.shape = autoencoder.latent_shape(cfg.image.size, cfg.image.size)
        T = self.diffusion.T
        if self.flow:  # times in [0, 1] as the run's Euler sampler takes them: 1 .. 1 / T evenly, shifted, then 0
            shift = self.diffusion.shift(math.prod(self.shape))
            even = torch.linspace(1, 1 / T, self.steps, dtype=torch.float64)
            self.timesteps = [float(u) for u in shift_timesteps(even, shift)] + [0.0]
        else:
            if T % self.steps:
                raise ValueError(f"posttrain.sample_steps={self.steps} must divide diffusion.timesteps={T}")
            self.timesteps = [T - k * (T // self.steps) for k in range(self.steps)] + [0]  # t_0 = T .. t_K = 0

    # ---------------------------------------------------------------- the model's inputs
    def rows(self, prompts: list[str], device) -> Rows:
        """The conditional rows, then with guidance the unconditional ones (``<bos> <boi>``: no
        caption, and for an edit no source either, as ``transfusion edit`` guides with one scale)."""
        prompts = [p if isinstance(p, Prompt) else Prompt(p) for p in prompts]
        n, edits = len(prompts), prompts[0].source is not None
        if any((p.source is not None) != edits for p in prompts):
            raise ValueError("a batch of prompts is all edits (with a source image) or all captions")
        sources = [self.autoencoder.encode(p.source[None].to(device))[0] for p in prompts] if edits else []
        T, marker = self.diffusion.T, Image(torch.zeros(3, 1, 1))  # layout places the latents it is given

        def placed(segments: list, latents: list, caps: list):
            return layout([*segments, marker], [*latents, torch.zeros(self.shape)], [*caps, T], self.tokenizer,
                          self.num_patches, close=False)

        if edits:
            layouts = [placed([marker, Text(p)], [s.cpu()], [CONTEXT_IMAGE]) for p, s in zip(prompts, sources)]
        else:
            layouts = [placed([Text(p)], [], []) for p in prompts]
        if self.guidance != 1:
            layouts += [placed([], [], []) for _ in prompts]
        batch, _ = pack(layouts, len(layouts), max(len(lay.ids) for lay in layouts), self.tokenizer.pad_id,
                        one_per_row=True)
        batch = batch.to(device)
        if not edits:
            return Rows(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, torch.stack(batch.index))
        # images in row order: each conditional row's source and new image, then each unconditional row's new image
        index = torch.stack(batch.index[1:2 * n:2] + batch.index[2 * n:])
        latents = torch.stack(sources)
        times = torch.full((n,), CONTEXT_T, device=device, dtype=torch.float32 if self.flow else torch.long)
        context = ImageGroup(latents, times, torch.stack(batch.index[0:2 * n:2]))
        reference = None
        if self.edit_reference:  # the source at the image layers, zeros in the unconditional branch
            reference = torch.cat([latents, torch.zeros_like(latents)]) if self.guidance != 1 else latents
        return Rows(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, index, context, reference)

    def noise(self, model, rows: Rows, x: torch.Tensor, t) -> torch.Tensor:
        """The (guided) prediction (N, C, h, w), noise or velocity, at latents ``x`` and time ``t``
        (a timestep 1..T, or for a flow a time in [0, 1])."""
        k = 2 if self.guidance != 1 else 1
        n = len(x)
        if self.flow:
            times = torch.full((k * n,), t * self.diffusion.T, dtype=torch.float32, device=x.device)
        else:
            times = torch.full((k * n,), t, dtype=torch.long, device=x.device)
        groups = [ImageGroup(x.repeat(k, 1, 1, 1), times, rows.index, rows.reference)]
        _, predictions = model(rows.tokens, rows.positions, rows.doc_ids, rows.image_ids,
                               [rows.context, *groups] if rows.context is not None else groups)
        eps = predictions[-1]
        if k == 1:
            return eps
        conditional, unconditional = eps.split(n)
        return unconditional + self.guidance * (conditional - unconditional)

    # ---------------------------------------------------------------- the sampler
    def distribution(self, eps: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
        """Mean (N, C, h, w) and standard deviation of step k's posterior, from the model's
        prediction ``eps`` (noise; a flow's velocity)."""
        if self.flow:
            return self._flow_distribution(eps, x, k)
        ab = self.diffusion.alpha_bar
        t, s = self.timesteps[k], self.timesteps[k + 1]
        a_t, a_s = ab[t].item(), ab[s].item()
        if self.clip > 0:
            eps = clip_noise(eps, x, a_t, self.clip)
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        beta = 1 - a_t / a_s
        mean = (a_s**0.5 * beta / (1 - a_t)) * x0 + ((a_t / a_s) ** 0.5 * (1 - a_s) / (1 - a_t)) * x
        return mean, ((1 - a_s) / (1 - a_t) * beta) ** 0.5

    def _flow_distribution(self, v: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
        t, s = self.timesteps[k], self.timesteps[k + 1]
        if self.clip > 0:
            v = clip_velocity(v, x, t, self.clip)
        if s == 0:
            return x - t * v, 0.0
        h = t - s
        sigma = self.flow_noise * (t / (1 - min(t, self.timesteps[1]))) ** 0.5
        return x - h * (v + sigma**2 / (2 * t) * (x + (1 - t) * v)), sigma * h**0.5

    @torch.no_grad()
    def rollout(self, model, prompts: list[str], generator: torch.Generator | None = None,
                reference=None) -> Rollout:
        """One image per prompt (repeat a prompt for a group), sampled by ``model``;
        ``reference``: a model (or a context manager's model) whose means are kept for the KL term."""
        device = next(model.parameters()).device
        rows = self.rows(prompts, device)
        x = randn((len(prompts), *self.shape), generator).to(device)
        latents, log_probs, reference_means = [x], [], []
        for k in range(self.steps):
            mean, std = self.distribution(self.noise(model, rows, x, self.timesteps[k]).float(), x, k)
            if std == 0:
                x = mean
            else:
                x = mean + std * randn(tuple(x.shape), generator).to(device)
                log_probs.append(gaussian_log_prob(x, mean, std))
                if reference is not None:
                    reference_means.append(self.distribution(
                        self.noise(reference, rows, latents[-1], self.timesteps[k]).float(), latents[-1], k)[0])
            latents.append(x)
        log_probs = torch.stack(log_probs) if log_probs else torch.zeros(0, len(prompts), device=device)
        return Rollout(list(prompts), torch.stack(latents), log_probs,
                       torch.stack(reference_means) if reference_means else None, rows)

    def step(self, model, rollout: Rollout, k: int):
        """Step k's log-probability (N,) of what the rollout drew, under ``model`` (with its
        gradient), with the step's mean and standard deviation."""
        x, rows = rollout.latents[k], rollout.rows
        mean, std = self.distribution(self.noise(model, rows, x, self.timesteps[k]).float(), x, k)
        return gaussian_log_prob(rollout.latents[k + 1], mean, std), mean, std

    def pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) -> images (N, 3, H, W) in [-1, 1]."""
        with torch.no_grad():
            return self.autoencoder.decode(latents).clamp(-1, 1)

    # ---------------------------------------------------------------- as GRPO uses a policy
    def outputs(self, rollout: Rollout) -> torch.Tensor:
        return self.pixels(rollout.samples)

    def score(self, reward, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        return score_all(reward, prompts, images)

    def judged(self, prompts: list[str], images: torch.Tensor, group: int = 1) -> dict:
        return judged_images(prompts, images, edits=prompts[0].source is not None, group=group)

    def grid(self, prompts: list[str], images: torch.Tensor):
        """The first 32 images under their prompts (an edit beside its source)."""
        shown, labels = images[:32].cpu(), list(prompts[:32])
        if prompts[0].source is not None:
            shown = torch.stack([x for p, img in zip(prompts, shown) for x in (p.source, img)])
            labels = [p for p in labels for _ in range(2)]
        return image_grid(shown, labels)

    def backward(self, model, rollout: Rollout, advantages: torch.Tensor, pt, generator) -> dict:
        """The gradient of one pass of the clipped objective over a ``pt.timestep_fraction`` share of
        the stochastic steps (the ratio per latent element, as DDPO), with ``pt.kl`` times the KL to
        the start: ||mu - mu_start||^2 / (2 sigma^2) per element, both Gaussians sharing sigma."""
        stochastic = len(rollout.log_probs)
        chosen = max(1, round(pt.timestep_fraction * stochastic))
        d = rollout.samples[0].numel()
        stats = {"kl": 0.0, "clipped": 0.0, "loss": 0.0}
        for k in torch.randperm(stochastic, generator=generator)[:chosen].tolist():
            log_prob, mean, std = self.step(model, rollout, k)
            ratio = torch.exp((log_prob - rollout.log_probs[k]) / d)
            loss = clipped_objective(ratio, advantages, pt.clip_range).mean()
            if rollout.reference_means is not None:
                kl = ((mean - rollout.reference_means[k]) ** 2).flatten(1).mean(1) / (2 * std**2)
                loss = loss + pt.kl * kl.mean()
                stats["kl"] += kl.mean().item() / chosen
            (loss / chosen).backward()
            stats["loss"] += loss.item() / chosen
            stats["clipped"] += ((ratio - 1).abs() > pt.clip_range).float().mean().item() / chosen
        return stats
