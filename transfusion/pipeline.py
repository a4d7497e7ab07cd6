"""A pipeline in the diffusers manner: PIL images in and out, one object per checkpoint.

    import torch, transfusion
    pipe = transfusion.Pipeline.from_pretrained("runs/tiny")         # a run, a checkpoint, a saved folder or a repo id
    images = pipe("a red circle", num_inference_steps=25, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0)).images  # PIL images
    text = pipe.caption(images[0])
    edited = pipe.edit(images[0], "make the circle blue").images       # a run fine-tuned on edits
    parts = pipe.generate("first a red circle, then a green triangle:")   # interleaved: str and PIL images

Each method is an adapter over a task of ``transfusion.engine.tasks``; settings not named here
(top-k, stop strings, the image-guidance scale) are ``Request`` fields, passed as keyword arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from PIL import Image as PILImage

from transfusion.checkpoint import Loaded
from transfusion.data.document import Image, Text
from transfusion.engine import Engine, Request, tasks
from transfusion.fileio import fit_image, to_pil


@dataclass
class PipelineOutput:
    images: list[PILImage.Image]
    settings: dict  # the resolved sampling settings (sampler, steps, guidance, seed, ...)


class Pipeline:
    """Text to image, image to text, interleaved generation and editing for one checkpoint."""

    def __init__(self, loaded: Loaded):
        self.loaded = loaded
        self.engine = Engine(loaded.model, loaded.tokenizer, loaded.autoencoder, loaded.config)

    @classmethod
    def from_pretrained(cls, path_or_repo_id, device: str = "cpu", ema: bool = False,
                        precision: str = "auto", lora=None) -> "Pipeline":
        """``precision``: the trunk's products, ``auto`` (bf16 on a CPU with native bf16, else fp32),
        ``fp32``, ``bf16`` or ``int8`` (CPU) (``engine.speedups.with_precision``; docs/speed.md);
        ``lora``: a LoRA adapter (peft's folder or a LoRA run) merged into the weights."""
        from transfusion.engine.speedups import with_precision
        from transfusion.sharing import from_pretrained

        loaded = from_pretrained(path_or_repo_id, device=device, ema=ema, lora=lora)
        return cls(with_precision(loaded, precision))

    def save_pretrained(self, folder) -> None:
        from transfusion.sharing import save_pretrained

        save_pretrained(self.loaded.path, folder)

    @staticmethod
    def _seed(generator: torch.Generator | None, seed: int | None) -> int:
        """Sample i of a call uses seed + i; a generator gives the seed by one draw (so it advances)."""
        if generator is not None:
            return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return 0 if seed is None else seed

    def _pixels(self, image) -> torch.Tensor:
        if isinstance(image, PILImage.Image):
            return fit_image(image, self.loaded.config.image.size)
        return image

    def __call__(self, prompt: str | list[str], num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, num_images_per_prompt: int = 1,
                 generator: torch.Generator | None = None, seed: int | None = None, sampler: str | None = None,
                 height: int | None = None, width: int | None = None, **request) -> PipelineOutput:
        """One image per prompt and ``num_images_per_prompt``, as PIL images."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        size = None if height is None and width is None else (height or width, width or height)
        req = Request(sampler=sampler, steps=num_inference_steps, guidance=guidance_scale, image_size=size,
                      seed=self._seed(generator, seed), **request)
        captions = [p for p in prompts for _ in range(num_images_per_prompt)]
        done = tasks.text_to_image(self.engine, captions, req, interactive=True)
        return PipelineOutput([to_pil(x) for x in done.images], dataclasses.asdict(done.request))

    def caption(self, image, prompt: str = "", max_new_tokens: int = 32, **request) -> str | list[str]:
        """A greedy caption of a PIL image (or a list of them; or (3, H, W) tensors in [-1, 1])."""
        many = isinstance(image, (list, tuple))
        images = list(image) if many else [image]
        done = tasks.caption(self.engine, [[Image(self._pixels(x))] for x in images],
                             Request(max_new_tokens=max_new_tokens, **request), prompt=prompt)
        return done.texts if many else done.texts[0]

    def edit(self, image, instruction: str, num_inference_steps: int | None = None,
             guidance_scale: float | None = None, image_guidance_scale: float | None = None,
             num_images: int = 1, generator: torch.Generator | None = None, seed: int | None = None,
             **request) -> PipelineOutput:
        """Edit a PIL image (or a (3, H, W) tensor in [-1, 1]) by an instruction: ``num_images``
        samples, for a run fine-tuned on editing triples (``data.edit_fraction``)."""
        req = Request(steps=num_inference_steps, guidance=guidance_scale, image_guidance=image_guidance_scale,
                      seed=self._seed(generator, seed), **request)
        done = tasks.edit(self.engine, [self._pixels(image)] * num_images, [instruction] * num_images, req,
                          interactive=True)
        return PipelineOutput([to_pil(x) for x in done.images], dataclasses.asdict(done.request))

    def generate(self, prompt: str, images=(), max_new_tokens: int = 128, max_images: int = 4,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None, **request) -> list:
        """Continue ``prompt`` (after ``images``, if any) with text and images: a list of str and PIL images."""
        row = [Image(self._pixels(x)) for x in images] + ([Text(prompt)] if prompt else [])
        req = Request(max_new_tokens=max_new_tokens, max_images=max_images, steps=num_inference_steps,
                      guidance=guidance_scale, seed=self._seed(generator, seed), **request)
        (sample,) = tasks.continue_documents(self.engine, [row], req, interactive=True).samples
        return [s.text if isinstance(s, Text) else to_pil(s.pixels) for s in sample.segments]
