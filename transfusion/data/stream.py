"""The training stream: a mixture of sources turned into one packed batch per step.

Row ``r`` of the batch of step ``s`` depends only on (seed, s, r): its documents, their
arrangement and the diffusion noise of its images are drawn from generators seeded by
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
from transfusion.diffusion import noise_process
from transfusion.tokenizer import Tokenizer

if TYPE_CHECKING:
    from transfusion.autoencoders import Autoencoder


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

    def by_tokens(self, length, sample: int = 256) -> "Mixture":
        """The same sources with their weights read as shares of *tokens*, not documents: each
        document weight divided by its source's mean ``length(doc)`` over ``sample`` documents
        drawn with a fixed seed (the paper samples text and image-caption data 1:1 by tokens)."""
        rng = random.Random(0)
        means = []
        for source, _ in self.sources:
            lengths = [length(source[rng.randrange(len(source))]) for _ in range(sample)]
            means.append(sum(lengths) / len(lengths))
        return Mixture([(s, w / m) for (s, w), m in zip(self.sources, means)])


def build_mixture(cfg: Config, split: str = "train"):
    """The run's sources: the image dataset, real text, interleaved shapes documents and editing
    triples (``data.edit_fraction``); or
    a sharded corpus (``data.dataset`` naming .tar shards), which is its own mixture."""
    from transfusion.data.registry import load_dataset
    from transfusion.data.shards import ShardedCorpus, is_sharded

    d = cfg.data
    if is_sharded(d.dataset.replace("{split}", split)):
        return ShardedCorpus(d.dataset.replace("{split}", split), cfg.image.size, d.batch_size, cfg.train.seed)
    image_share = 1.0 - d.text_fraction
    sources: list[tuple[object, float]] = []
    if d.dataset == "shapes" and d.interleaved_fraction > 0:
        from transfusion.data.shapes import ShapesDataset

        sources.append((ShapesDataset(split, size=cfg.image.size, kinds=["interleaved"]), d.interleaved_fraction))
        image_share -= d.interleaved_fraction
    if d.edit_fraction > 0:
        sources.append((load_dataset(d.edit_dataset, split, cfg.image.size), d.edit_fraction))
        image_share -= d.edit_fraction
    sources.append((load_dataset(d.dataset, split, cfg.image.size), image_share))
    if d.text_dataset and d.text_fraction > 0:
        sources.append((load_dataset(d.text_dataset, split, cfg.image.size), d.text_fraction))
    return Mixture(sources)


class BatchBuilder:
    """Documents -> packed, latent-encoded training batches."""

    def __init__(self, cfg: Config, mixture, tokenizer: Tokenizer, autoencoder: "Autoencoder", num_patches):
        """``mixture``: a ``Mixture`` (documents drawn at random) or a ``ShardedCorpus`` (streamed)."""
        self.cfg = cfg
        self.mixture = mixture
        self.tokenizer = tokenizer
        self.autoencoder = autoencoder
        self.num_patches = num_patches  # latent (h, w) -> patches per image
        self.diffusion = noise_process(cfg.diffusion)
        self.feed = None  # a streamed corpus's reader (open_streams)
        if cfg.data.mix_by == "tokens":
            if not isinstance(mixture, Mixture):
                raise ValueError("data.mix_by=tokens reweights drawn sources; a streamed corpus is read in its own order")
            self.mixture = mixture.by_tokens(self.tokens_of)
            self._match_text_share(cfg.data.text_fraction)

    def _match_text_share(self, share: float, rows: int = 64, rounds: int = 3) -> None:
        """Packing drops a document that fits in no row, and long text more often than short image
        documents, so token weights alone leave text short. The text-only sources' weight is
        corrected on sample rows (packed, not encoded; their own seeds) until text-only documents
        fill ``share`` of the positions."""
        text = [i for i, (s, _) in enumerate(self.mixture.sources)
                if not any(isinstance(x, Image) for x in s[0].segments)]
        if not text or not 0 < share < 1:
            return
        for k in range(rounds):
            in_text = total = 0
            for r in range(rows):
                b = self._drawn_row(random.Random(f"mix-by-tokens/{k}/{r}"))
                in_text, total = in_text + b.text_document_positions(), total + b.num_tokens
            realised = min(max(in_text / max(total, 1), 1e-3), 1 - 1e-3)
            odds = (share / (1 - share)) / (realised / (1 - realised))
            for i in text:
                self.mixture.weights[i] *= odds

    def tokens_of(self, doc: Document) -> int:
        """Positions ``doc`` takes in a row (text, image patches or codes, BOS/BOI/EOI/EOS), as trained."""
        patches = self.num_patches if self._latent_corpus else self._pixel_patches
        images = [s.pixels for s in doc.segments if isinstance(s, Image)]
        lay = layout(doc.segments, images, [self.cfg.diffusion.timesteps] * len(images), self.tokenizer, patches)
        return min(len(lay.ids), self.cfg.data.seq_len)

    def _pixel_patches(self, hw: tuple[int, int]) -> int:
        _, h, w = self.autoencoder.latent_shape(*hw)
        return self.num_patches((h, w))

    @property
    def _latent_corpus(self) -> bool:
        return getattr(self.mixture, "latents", False)

    def _layouts(self, docs: Iterator[Document], rng: random.Random) -> Iterator[Layout]:
        seq_len = self.cfg.data.seq_len
        patches = self.num_patches if self._latent_corpus else self._pixel_patches
        for doc in docs:
            segments, max_t = arrange(doc, rng, self.cfg.diffusion)
            pixels = [s.pixels for s in segments if isinstance(s, Image)]
            lay = layout(segments, pixels, max_t, self.tokenizer, patches)
            yield truncate(lay, seq_len)

    def _drawn(self, rng: random.Random) -> Iterator[Document]:
        while True:
            yield self.mixture.draw(rng)

    def open_streams(self, rows: range, state: dict | None = None) -> None:
        """For a streamed corpus: open the streams of ``rows`` (this process's rows of every
        batch) where ``state`` (a checkpoint's ``stream_state()``) left them."""
        from transfusion.data.shards import ShardedCorpus, StreamFeed, positions_from_state

        if isinstance(self.mixture, ShardedCorpus):
            self.feed = StreamFeed(self.mixture, positions_from_state(state, rows), self.cfg.data.workers)

    def stream_state(self) -> dict:
        """Where this process's streams stand (empty for drawn sources)."""
        if self.feed is None:
            return {}
        return {"streams": {str(r): p.as_dict() for r, p in self.feed.position.items()}}

    @property
    def skipped(self) -> int:
        """Corrupt records skipped so far by this process."""
        return self.feed.skipped if self.feed is not None else 0

    def _row(self, step: int, seed: int, r: int) -> PackedBatch:
        rng = random.Random(f"{seed}/{step}/{r}")
        seq_len, pad_id = self.cfg.data.seq_len, self.tokenizer.pad_id
        if not isinstance(self.mixture, Mixture):  # a streamed corpus
            if self.feed is None:
                self.open_streams(range(self.cfg.data.batch_size))
            if r not in self.feed.position:
                raise ValueError(f"row {r} is not among the rows whose streams were opened (open_streams)")
            row, used = pack(self._layouts(self.feed.take(r), rng), 1, seq_len, pad_id)  # drops no document
            self.feed.commit(r, used)
            return row
        return self._drawn_row(rng)

    def _drawn_row(self, rng: random.Random) -> PackedBatch:
        """One row of documents drawn from the mixture (a document that fits nowhere is skipped)."""
        return pack(self._layouts(self._drawn(rng), rng), 1, self.cfg.data.seq_len, self.tokenizer.pad_id,
                    patience=4)[0]

    def batch_at(self, step: int, seed: int, rows: range | None = None) -> PackedBatch:
        """The packed, encoded batch of ``step``, or just its ``rows`` (default: all
        ``data.batch_size`` of them), with each image's diffusion timestep and noise drawn.

        From a streamed corpus rows continue their streams: call it once per step, in order.
        """
        rows = range(self.cfg.data.batch_size) if rows is None else rows
        batch = PackedBatch.concat([self._row(step, seed, r) for r in rows])
        if self.cfg.image.objective == "tokens":  # VQ codes as tokens after the text vocabulary
            if self._latent_corpus:
                raise ValueError("image.objective=tokens needs images, not a corpus of precomputed latents")
            return batch.images_as_tokens(self.encode(batch.latents, self.autoencoder.tokenize), self.tokenizer.vocab_size)
        if not self._latent_corpus:
            batch.latents = self.encode(batch.latents)
        generators = {r: torch.Generator().manual_seed(zlib.crc32(f"{seed}/{step}/{r}/noise".encode())) for r in rows}
        image_rows = [rows[i] for i in batch.image_rows()]
        t = [self.diffusion.sample_t(batch.max_t[i : i + 1], generators[r], batch.latents[i].numel())
             for i, r in enumerate(image_rows)]
        batch.t = torch.cat(t) if t else torch.zeros(0, dtype=torch.long)
        batch.noise = [torch.randn(lat.shape, generator=generators[r]) for lat, r in zip(batch.latents, image_rows)]
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
