"""Generation settings: one ``Request`` per ``generate`` call, resolved against the run once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from transfusion.config import Config
from transfusion.samplers import SAMPLER_STEPS, check_sampler, default_sampler


def resolve_clip(clip_sample: float, autoencoder) -> float:
    """The x0 clamp a sampler uses: ``sampling.clip_sample`` when set (>= 0), else (-1, auto) the
    autoencoder's ``sample_clip``: 1 for pixels, 3 for latents."""
    return float(autoencoder.sample_clip) if clip_sample < 0 else float(clip_sample)


# what interactive use (generate, edit, the demo, Pipeline) samples with when no sampler is named,
# for runs whose sampling.sampler is auto: the best quality per second measured on `small`
# (docs/sampling.md: within 2 points of DDPM 250 on every attribute at a ninth of its time)
INTERACTIVE_SAMPLERS = {"ddpm": "dpm++sde"}


def interactive_sampler(cfg: Config) -> str | None:
    """The sampler interactive commands use by default: ``INTERACTIVE_SAMPLERS`` for the run's
    objective when its ``sampling.sampler`` is auto, else None (the run's own)."""
    if cfg.image.objective != "diffusion" or cfg.sampling.sampler != "auto":
        return None
    return INTERACTIVE_SAMPLERS.get(cfg.diffusion.objective)


@dataclass
class Request:
    """Sampling settings for one ``generate`` call; ``None`` means the run's configured default."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0  # text tokens before EOS or BOI may end the text (captions that say something)
    max_images: int = 1
    temperature: float = 0.0  # 0: greedy (the paper's default)
    top_k: int = 0
    top_p: float = 1.0
    image_size: int | tuple[int, int] | None = None  # pixels, side or (H, W); default: image.size
    sampler: str | None = None  # ddpm | ddim | dpm++ (ddpm objective), euler | heun (flow); default: the run's
    eta: float = 0.0  # ddim only: 0 deterministic, 1 the ancestral posterior's noise
    steps: int | None = None  # default: sampling.steps for the run's sampler, else SAMPLER_STEPS
    guidance: float | None = None  # CFG scale on the whole context (text scale when image_guidance is set)
    image_guidance: float | None = None  # separate scale for images in the context; None: one scale
    strength: float = 1.0  # < 1: a new image starts from its context's last image, noised (image to image)
    edit: bool = False  # a new image edits its context's last image (fed to the adapter: image.edit_reference)
    clip: float | None = None  # x0 clamp while denoising; default: sampling.clip_sample (resolve_clip)
    stop: list[str] = field(default_factory=list)  # stop strings in the generated text
    image_temperature: float = 1.0  # sampling of image tokens (image.objective=tokens only)
    seed: int = 0  # row b of a batch samples with seed + b, as it would alone with that seed

    def resolve(self, cfg: Config, autoencoder) -> "Request":
        """A copy with every default filled in from the run's ``cfg`` and ``autoencoder``, and
        every setting checked: the one place where sampling defaults are decided."""
        d, run = cfg.diffusion, cfg.sampling
        run_sampler = default_sampler(d.objective) if run.sampler == "auto" else run.sampler
        sampler = self.sampler or run_sampler
        steps = self.steps
        if steps is None:
            steps = run.steps if sampler == run_sampler else SAMPLER_STEPS.get(sampler)
        if cfg.image.objective == "diffusion":
            check_sampler(sampler, steps, d.timesteps, d.objective, self.eta)
        if self.temperature < 0 or self.image_temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"temperature and image_temperature must be >= 0, top_p in (0, 1] and top_k >= 0; got "
                             f"{self.temperature}, {self.image_temperature}, {self.top_p}, {self.top_k}")
        if not 0 < self.strength <= 1 or (self.strength < 1 and cfg.image.objective != "diffusion"):
            raise ValueError(f"strength must be in (0, 1], and 1 unless images are diffused; got {self.strength}")
        if self.max_new_tokens < 1 or self.max_images < 0 or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("max_new_tokens must be >= 1, min_new_tokens in [0, max_new_tokens] and max_images >= 0")
        size = self.image_size or cfg.image.size
        clip = resolve_clip(run.clip_sample if self.clip is None else self.clip, autoencoder)
        return dataclasses.replace(
            self, sampler=sampler, steps=steps, image_size=(size, size) if isinstance(size, int) else tuple(size),
            guidance=run.guidance if self.guidance is None else self.guidance, clip=clip)

    def settings(self) -> dict:
        """Every setting, for the JSON written next to an output."""
        return dataclasses.asdict(self)
