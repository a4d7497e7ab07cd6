"""The training stream: a run's ``Source`` of documents turned into one packed batch per step.

Row ``r`` of the batch of step ``s`` depends only on (seed, s, r): its documents (drawn from a
``Mixture``; a streamed corpus's row continues its stream, whose position checkpoints keep),
their arrangement and the diffusion noise of its images are drawn from generators seeded by
those three numbers. So a resumed run sees exactly the batches an uninterrupted one would,
and a process that trains on rows [a, b) of each global batch builds only those rows: any
number of processes and accumulation steps see the same global batch.
"""

from __future__ import annotations

import random
import zlib
from typing import TYPE_CHECKING, Iterator

import torch

from transfusion.config import Config
from transfusion.data.document import Document, Image
from transfusion.data.packing import Layout, PackedBatch, arrange, layout, pack, truncate
from transfusion.data.sources import Source
from transfusion.diffusion import noise_process
from transfusion.tokenizer import Tokenizer

if TYPE_CHECKING:
    from transfusion.autoencoders import Autoencoder


class BatchBuilder:
    """Documents of a ``Source`` -> packed, latent-encoded training batches with their diffusion draw."""

    def __init__(self, cfg: Config, source: Source, tokenizer: Tokenizer, autoencoder: "Autoencoder", num_patches):
        self.cfg = cfg
        self.source = source
        self.tokenizer = tokenizer
        self.autoencoder = autoencoder
        self.num_patches = num_patches  # latent (h, w) -> patches per image
        self.diffusion = noise_process(cfg.diffusion)
        if cfg.data.mix_by == "tokens":
            self.source = source.by_tokens(self.tokens_of, self._sample_row, cfg.data.text_fraction)

    def tokens_of(self, doc: Document) -> int:
        """Positions ``doc`` takes in a row (text, image patches or codes, BOS/BOI/EOI/EOS), as trained."""
        images = [self._image(s) for s in doc.segments if isinstance(s, Image)]
        lay = layout(doc.segments, images, [self.cfg.diffusion.timesteps] * len(images), self.tokenizer, self._patches)
        return min(len(lay.ids), self.cfg.data.seq_len)

    def _image(self, image: Image) -> torch.Tensor:
        """What a row holds of an image: its latents (precomputed), else its pixels (encoded with the batch)."""
        return image.latents if self.source.precomputed_latents else image.pixels

    def _patches(self, hw: tuple[int, int]) -> int:
        """Patches of an image whose row tensor is (C, *hw): latents, or pixels as the autoencoder will encode them."""
        if self.source.precomputed_latents:
            return self.num_patches(hw)
        _, h, w = self.autoencoder.latent_shape(*hw)
        return self.num_patches((h, w))

    def _layouts(self, docs: Iterator[Document], rng: random.Random) -> Iterator[Layout]:
        seq_len = self.cfg.data.seq_len
        for doc in docs:
            segments, max_t = arrange(doc, rng, self.cfg.diffusion)
            images = [self._image(s) for s in segments if isinstance(s, Image)]
            yield truncate(layout(segments, images, max_t, self.tokenizer, self._patches), seq_len)

    def _row(self, source: Source, r: int, rng: random.Random) -> PackedBatch:
        """Row ``r``, packed from ``source``'s documents for it (not encoded yet)."""
        layouts = self._layouts(source.documents(r, rng), rng)
        row, used = pack(layouts, 1, self.cfg.data.seq_len, self.tokenizer.pad_id, patience=source.patience,
                         encoded=source.precomputed_latents)
        source.commit(r, used)
        return row

    def _sample_row(self, source: Source, rng: random.Random) -> PackedBatch:
        return self._row(source, 0, rng)

    def batch_at(self, step: int, seed: int, rows: range | None = None) -> PackedBatch:
        """The packed, encoded batch of ``step``, or just its ``rows`` (default: all
        ``data.batch_size`` of them), with each image's diffusion timestep and noise drawn
        (``NoiseProcess.draw``, from a generator of the image's row).

        From a streamed corpus rows continue their streams: call it once per step, in order.
        """
        rows = range(self.cfg.data.batch_size) if rows is None else rows
        batch = PackedBatch.concat([self._row(self.source, r, random.Random(f"{seed}/{step}/{r}")) for r in rows])
        if self.cfg.image.objective == "tokens":  # VQ codes as tokens after the text vocabulary
            if self.source.precomputed_latents:
                raise ValueError("image.objective=tokens needs images, not a corpus of precomputed latents")
            return batch.images_as_tokens(self.encode(batch.pixels, self.autoencoder.tokenize), self.tokenizer.vocab_size)
        if not self.source.precomputed_latents:
            batch.latents, batch.pixels = self.encode(batch.pixels), None
        generators = {r: torch.Generator().manual_seed(zlib.crc32(f"{seed}/{step}/{r}/noise".encode())) for r in rows}
        batch.t, batch.noise = self.diffusion.draw(batch.latents, batch.max_t,
                                                   [generators[rows[i]] for i in batch.image_rows()])
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
