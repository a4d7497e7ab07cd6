"""A run's training documents: one interface, ``Source``, and its two implementations.

    source = build_source(cfg)            # the run's source, picked from cfg.data
    source.open(rows, state)              # this process's rows, where a checkpoint left them
    docs = source.documents(r, rng)       # row r's next documents; commit(r, used) says how many went in

A ``Mixture`` draws documents at random from weighted datasets (the image dataset, real
text, interleaved shapes documents, editing triples): row ``r`` of a step depends only on
the generator it is handed. A ``StreamedCorpus`` reads .tar shards in order, row ``r`` of
every batch continuing stream ``r`` (``shards.py``), and saves where each stream stands.
``BatchBuilder`` (``stream.py``) and training read either through ``Source`` alone.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Callable, Iterator

from transfusion.config import Config
from transfusion.data.document import Document, Image
from transfusion.data.registry import load_dataset
from transfusion.data.shards import ShardedCorpus, StreamFeed, corpus_autoencoder, positions_from_state

if TYPE_CHECKING:
    from transfusion.autoencoders import Autoencoder
    from transfusion.data.packing import PackedBatch

SampleRow = Callable[["Source", random.Random], "PackedBatch"]  # (source, rng) -> one packed, unencoded row


class Source:
    """Where a run's training documents come from.

    Row ``r`` of a batch is packed from ``documents(r, rng)`` in order until one fits nowhere
    (after ``patience`` more misses in a row; those are dropped), then ``commit(r, used)``.
    """

    patience = 0  # documents in a row that may fit nowhere (and are dropped) before a row is closed
    precomputed_latents = False  # its images hold latents (``Image.latents``), not pixels

    def documents(self, row: int, rng: random.Random) -> Iterator[Document]:
        """Row ``row``'s next documents (``rng``: the row's own generator)."""
        raise NotImplementedError

    def commit(self, row: int, used: int) -> None:
        """Of the documents ``documents(row, ...)`` handed out, the first ``used`` went into the row."""

    def text_sample(self, n: int, seed: int) -> list[str]:
        """The text of ``n`` documents (a BPE tokenizer learns from it)."""
        raise NotImplementedError

    def autoencoder(self, wanted: str) -> "Autoencoder | None":
        """The autoencoder its latents were encoded with (a run naming ``wanted`` must use that
        one), or None: its images are pixels."""
        return None

    def by_tokens(self, length: Callable[[Document], int], sample_row: SampleRow, share: float) -> "Source":
        """The same source with its fractions read as shares of tokens (``data.mix_by=tokens``)."""
        raise NotImplementedError

    def open(self, rows: range, state: dict | None = None) -> None:
        """Start this process's ``rows`` of every batch where ``state`` (a checkpoint's ``state()``) left them."""

    def state(self) -> dict:
        """Where this process's rows stand (empty: a row depends on its generator alone)."""
        return {}

    @property
    def skipped(self) -> int | None:
        """Corrupt records skipped so far by this process; None for a source that reads no records."""
        return None


class Mixture(Source):
    """Draws documents from weighted datasets (each: ``len`` and ``[i] -> Document``)."""

    patience = 4

    def __init__(self, datasets: list[tuple[object, float]]):
        self.datasets = [(d, w) for d, w in datasets if w > 0]
        if not self.datasets:
            raise ValueError("the data mixture is empty: give at least one source a positive weight")
        for dataset, _ in self.datasets:
            if len(dataset) == 0:
                raise ValueError(f"data source {dataset!r} holds no documents")
        self.weights = [w for _, w in self.datasets]

    def draw(self, rng: random.Random) -> Document:
        (dataset, _), = rng.choices(self.datasets, weights=self.weights)
        return dataset[rng.randrange(len(dataset))]

    def documents(self, row: int, rng: random.Random) -> Iterator[Document]:
        while True:
            yield self.draw(rng)

    def text_sample(self, n: int, seed: int) -> list[str]:
        rng = random.Random(seed)
        return [self.draw(rng).caption for _ in range(n)]

    def by_tokens(self, length: Callable[[Document], int], sample_row: SampleRow, share: float,
                  sample: int = 256) -> "Mixture":
        """Each document weight divided by its dataset's mean ``length(doc)`` over ``sample``
        documents drawn with a fixed seed (the paper samples text and image-caption data 1:1
        by tokens); then the text-only datasets' weight matched to ``share`` (``_match_text_share``)."""
        rng = random.Random(0)
        means = []
        for dataset, _ in self.datasets:
            lengths = [length(dataset[rng.randrange(len(dataset))]) for _ in range(sample)]
            means.append(sum(lengths) / len(lengths))
        mixture = Mixture([(d, w / m) for (d, w), m in zip(self.datasets, means)])
        mixture._match_text_share(sample_row, share)
        return mixture

    def _match_text_share(self, sample_row: SampleRow, share: float, rows: int = 64, rounds: int = 3) -> None:
        """Packing drops a document that fits in no row, and long text more often than short image
        documents, so token weights alone leave text short. The text-only datasets' weight is
        corrected on sample rows (packed, not encoded; their own seeds) until text-only documents
        fill ``share`` of the positions."""
        text = [i for i, (d, _) in enumerate(self.datasets) if not any(isinstance(x, Image) for x in d[0].segments)]
        if not text or not 0 < share < 1:
            return
        for k in range(rounds):
            in_text = total = 0
            for r in range(rows):
                b = sample_row(self, random.Random(f"mix-by-tokens/{k}/{r}"))
                in_text, total = in_text + b.text_document_positions(), total + b.num_tokens
            realised = min(max(in_text / max(total, 1), 1e-3), 1 - 1e-3)
            odds = (share / (1 - share)) / (realised / (1 - realised))
            for i in text:
                self.weights[i] *= odds


class StreamedCorpus(Source):
    """A sharded corpus read in order: row ``r`` of every batch continues stream ``r`` of
    ``corpus`` (a ``ShardedCorpus``), ``workers`` processes reading ahead. Call ``open`` first
    (else every row is opened at the start), then take each row once per step, in order."""

    def __init__(self, corpus: ShardedCorpus, workers: int = 2):
        self.corpus, self.workers = corpus, workers
        self.precomputed_latents = corpus.latents
        self.feed: StreamFeed | None = None

    def __repr__(self) -> str:
        return f"StreamedCorpus({self.corpus!r})"

    def open(self, rows: range, state: dict | None = None) -> None:
        self.feed = StreamFeed(self.corpus, positions_from_state(state, rows), self.workers)

    def documents(self, row: int, rng: random.Random) -> Iterator[Document]:
        if self.feed is None:
            self.open(range(self.corpus.streams))
        if row not in self.feed.position:
            raise ValueError(f"row {row} is not among the rows whose streams were opened (Source.open)")
        return self.feed.take(row)

    def commit(self, row: int, used: int) -> None:
        self.feed.commit(row, used)

    def state(self) -> dict:
        if self.feed is None:
            return {}
        return {"streams": {str(r): p.as_dict() for r, p in self.feed.position.items()}}

    @property
    def skipped(self) -> int:
        return self.feed.skipped if self.feed is not None else 0

    def text_sample(self, n: int, seed: int) -> list[str]:
        return self.corpus.texts(n)  # its first documents, in shard order

    def autoencoder(self, wanted: str) -> "Autoencoder | None":
        return corpus_autoencoder(self.corpus, wanted) if self.precomputed_latents else None

    def by_tokens(self, length, sample_row, share) -> Source:
        raise ValueError("data.mix_by=tokens reweights drawn sources; a streamed corpus is read in its own order")


def build_source(cfg: Config, split: str = "train") -> Source:
    """The run's training documents: ``data.dataset`` as .tar shards is a ``StreamedCorpus``
    (its own mixture, one stream per row of the global batch); any other dataset is drawn
    from with the others of ``cfg.data`` (``drawn_mixture``)."""
    d = cfg.data
    main = load_dataset(d.dataset, split, cfg.image.size, streams=d.batch_size, seed=cfg.train.seed)
    if isinstance(main, ShardedCorpus):
        return StreamedCorpus(main, d.workers)
    return drawn_mixture(cfg, split, main)


def drawn_mixture(cfg: Config, split: str = "train", main=None) -> Mixture:
    """The image dataset (``main``, loaded when not given), real text, interleaved shapes
    documents and editing triples (``data.edit_fraction``), drawn by their fractions."""
    d = cfg.data
    image_share = 1.0 - d.text_fraction
    datasets: list[tuple[object, float]] = []
    if d.dataset == "shapes" and d.interleaved_fraction > 0:
        from transfusion.data.shapes import ShapesDataset

        datasets.append((ShapesDataset(split, size=cfg.image.size, kinds=["interleaved"]), d.interleaved_fraction))
        image_share -= d.interleaved_fraction
    if d.edit_fraction > 0:
        datasets.append((load_dataset(d.edit_dataset, split, cfg.image.size), d.edit_fraction))
        image_share -= d.edit_fraction
    datasets.append((main if main is not None else load_dataset(d.dataset, split, cfg.image.size), image_share))
    if d.text_dataset and d.text_fraction > 0:
        datasets.append((load_dataset(d.text_dataset, split, cfg.image.size), d.text_fraction))
    return Mixture(datasets)
