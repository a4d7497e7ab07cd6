"""The training stream: a mixture of sources turned into one packed batch per step.

The batch of step ``s`` depends only on (seed, s): documents are drawn with a generator
seeded from both, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import random
from typing import Iterator

import torch

from transfusion.autoencoder import Autoencoder
from transfusion.config import Config
from transfusion.data.document import Document, Image
from transfusion.data.packing import Layout, PackedBatch, arrange, layout, pack, truncate
from transfusion.tokenizer import Tokenizer


class Mixture:
    """Draws documents from weighted sources (each: ``len`` and ``[i] -> Document``)."""

    def __init__(self, sources: list[tuple[object, float]]):
        self.sources = [(s, w) for s, w in sources if w > 0]
        if not self.sources:
            raise ValueError("the data mixture is empty: give at least one source a positive weight")
        for source, _ in self.sources:
            if len(source) == 0:
                raise ValueError(f"data source {source!r} holds no documents")
        self.weights = [w for _, w in self.sources]

    def draw(self, rng: random.Random) -> Document:
        (source, _), = rng.choices(self.sources, weights=self.weights)
        return source[rng.randrange(len(source))]


def build_mixture(cfg: Config, split: str = "train") -> Mixture:
    """The run's sources: the image dataset, real text, and interleaved shapes documents."""
    from transfusion.data.registry import load_dataset

    d = cfg.data
    image_share = 1.0 - d.text_fraction
    sources: list[tuple[object, float]] = []
    if d.dataset == "shapes" and d.interleaved_fraction > 0:
        from transfusion.data.shapes import ShapesDataset

        sources.append((ShapesDataset(split, size=cfg.image.size, kinds=["interleaved"]), d.interleaved_fraction))
        image_share -= d.interleaved_fraction
    sources.append((load_dataset(d.dataset, split, cfg.image.size), image_share))
    if d.text_dataset and d.text_fraction > 0:
        sources.append((load_dataset(d.text_dataset, split, cfg.image.size), d.text_fraction))
    return Mixture(sources)


class BatchBuilder:
    """Documents -> packed, latent-encoded training batches."""

    def __init__(self, cfg: Config, mixture: Mixture, tokenizer: Tokenizer, autoencoder: Autoencoder, num_patches):
        self.cfg = cfg
        self.mixture = mixture
        self.tokenizer = tokenizer
        self.autoencoder = autoencoder
        self.num_patches = num_patches  # latent (h, w) -> patches per image

    def _pixel_patches(self, hw: tuple[int, int]) -> int:
        _, h, w = self.autoencoder.latent_shape(*hw)
        return self.num_patches((h, w))

    def _layouts(self, rng: random.Random) -> Iterator[Layout]:
        seq_len = self.cfg.data.seq_len
        while True:
            doc = self.mixture.draw(rng)
            segments, max_t = arrange(doc, rng, self.cfg.diffusion)
            pixels = [s.pixels for s in segments if isinstance(s, Image)]
            lay = layout(segments, pixels, max_t, self.tokenizer, self._pixel_patches)
            yield truncate(lay, seq_len)

    def batch_at(self, step: int, seed: int) -> PackedBatch:
        rng = random.Random(f"{seed}/{step}")
        batch, _ = pack(self._layouts(rng), self.cfg.data.batch_size, self.cfg.data.seq_len, self.tokenizer.pad_id)
        if self.cfg.image.objective == "tokens":  # VQ codes as tokens after the text vocabulary
            return batch.images_as_tokens(self.encode(batch.latents, self.autoencoder.tokenize), self.tokenizer.vocab_size)
        batch.latents = self.encode(batch.latents)
        return batch

    @torch.no_grad()
    def encode(self, pixels: list[torch.Tensor], encoder=None) -> list[torch.Tensor]:
        """Encode images to latents (or with ``encoder``, e.g. a VQ's ``tokenize``, to codes),
        one call per image size."""
        encoder = encoder or self.autoencoder.encode
        out: list[torch.Tensor | None] = [None] * len(pixels)
        by_shape: dict[tuple, list[int]] = {}
        for i, p in enumerate(pixels):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        for ids in by_shape.values():
            latents = encoder(torch.stack([pixels[i] for i in ids]))
            for i, lat in zip(ids, latents):
                out[i] = lat
        return out
