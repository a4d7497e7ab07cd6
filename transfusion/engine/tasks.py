"""The four generation tasks, each set up once: every front-end (the CLI, ``Pipeline``, the demo,
evaluation) is an adapter over these.

    text_to_image(engine, ["a red circle"], Request(seed=0))       # one image per caption
    caption(engine, [[Image(pixels)]], Request(max_new_tokens=24))  # text for each group of images
    continue_documents(engine, [[Text("first a red circle")]], req)  # text and images, as the model decides
    edit(engine, [source], ["make the circle blue"], req)           # one edited image per source

Each task sets the token and image limits it needs (a caption says at least one token and
draws no image; text to image and edit force one image), resolves the request against the
run once, and runs its rows in chunks of ``batch_size``: row i samples with ``seeds[i]``
(default ``req.seed + i``) however it is chunked, so rows of several requests batched together
(the web demo's queue) sample as each would alone.
``interactive=True`` picks the measured fast sampler when the request names none
(``interactive_sampler``); evaluation leaves the run's own (the paper's DDPM 250).
Every task returns ``Generated``: the request as it ran and one ``Sample`` per row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from tqdm import tqdm

from transfusion.data.document import Image, Text
from transfusion.engine.engine import Engine
from transfusion.engine.settings import Request, interactive_sampler

BATCH_SIZE = 32  # rows generated at once


@dataclass
class Sample:
    """What one row generated, and the seed it used."""

    seed: int
    segments: list  # Text and Image segments, in order

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments if isinstance(s, Text))

    @property
    def images(self) -> list[torch.Tensor]:
        """Each generated image, (C, H, W) in [-1, 1]."""
        return [s.pixels for s in self.segments if isinstance(s, Image)]

    @property
    def image(self) -> torch.Tensor:
        """The first generated image (text to image and edit make exactly one)."""
        return self.images[0]


@dataclass
class Generated:
    request: Request  # resolved: the settings the samples were made with
    samples: list[Sample]

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.samples]

    @property
    def images(self) -> list[torch.Tensor]:
        return [s.image for s in self.samples]


def _run(engine: Engine, prompts: list[list], req: Request, force_image: bool, batch_size: int,
         progress: bool, seeds: list[int] | None) -> Generated:
    """Resolve ``req`` once, then generate ``prompts`` chunk by chunk, row i with ``seeds[i]``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    seeds = [req.seed + i for i in range(len(prompts))] if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"one seed per prompt: {len(seeds)} seeds for {len(prompts)} prompts")
    req = req.resolve(engine.config, engine.ae)
    samples = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="batches", unit="batch", disable=not progress or len(starts) < 2):
        chunk = seeds[start : start + batch_size]
        with torch.inference_mode():
            outputs = engine.generate(prompts[start : start + batch_size], req, force_image=force_image, seeds=chunk)
        samples += [Sample(seed, out) for seed, out in zip(chunk, outputs)]
    return Generated(req, samples)


def _with_sampler(req: Request, engine: Engine, interactive: bool) -> Request:
    if interactive and req.sampler is None:
        return dataclasses.replace(req, sampler=interactive_sampler(engine.config))
    return req


def text_to_image(engine: Engine, captions: list[str], req: Request = Request(), context: list = (),
                  interactive: bool = False, batch_size: int = BATCH_SIZE, progress: bool = False,
                  seeds: list[int] | None = None) -> Generated:
    """One image per caption (an empty caption: unconditional), after the ``context`` segments
    (images placed before each caption: editing-style prompts)."""
    prompts = [list(context) + ([Text(c)] if c else []) for c in captions]
    req = dataclasses.replace(_with_sampler(req, engine, interactive), max_new_tokens=1, max_images=1)
    return _run(engine, prompts, req, True, batch_size, progress, seeds)


def caption(engine: Engine, images: list[list[Image]], req: Request = Request(max_new_tokens=32),
            prompt: str | list[str] = "", batch_size: int = BATCH_SIZE, progress: bool = False,
            seeds: list[int] | None = None) -> Generated:
    """Text for each group of images (clean, in the run's size), after which ``prompt`` (one for
    every group, or a list: one per group) is continued; at least one token (training also shows
    images with no caption after them, so an unconstrained greedy decoder may rightly end the
    document at once), no image."""
    texts = [prompt] * len(images) if isinstance(prompt, str) else prompt
    prompts = [list(group) + ([Text(text)] if text else []) for group, text in zip(images, texts, strict=True)]
    req = dataclasses.replace(req, max_images=0, min_new_tokens=max(1, req.min_new_tokens))
    return _run(engine, prompts, req, False, batch_size, progress, seeds)


def continue_documents(engine: Engine, prompts: list[list], req: Request = Request(), interactive: bool = False,
                       batch_size: int = BATCH_SIZE, progress: bool = False,
                       seeds: list[int] | None = None) -> Generated:
    """Continue each prompt (Text and Image segments) with text and images, up to
    ``req.max_new_tokens`` tokens and ``req.max_images`` images: the model decides where they go."""
    return _run(engine, [list(p) for p in prompts], _with_sampler(req, engine, interactive), False, batch_size,
                progress, seeds)


def edit(engine: Engine, sources: list[torch.Tensor], instructions: list[str], req: Request = Request(),
         interactive: bool = False, batch_size: int = BATCH_SIZE, progress: bool = False,
         seeds: list[int] | None = None) -> Generated:
    """One edited image per source image (C, H, W) in [-1, 1] and instruction: the prompt
    ``[source, instruction]``, then an image fed the source (``image.edit_reference``). With
    ``req.image_guidance`` set, guidance combines unconditional, image-only and image +
    instruction branches (InstructPix2Pix)."""
    prompts = [[Image(pixels), Text(text)] for pixels, text in zip(sources, instructions, strict=True)]
    req = dataclasses.replace(_with_sampler(req, engine, interactive), max_new_tokens=1, max_images=1, edit=True)
    return _run(engine, prompts, req, True, batch_size, progress, seeds)
