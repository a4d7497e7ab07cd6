"""Large corpora: sharded tar files (WebDataset), streamed.

A shard is a tar file; a document is the run of members that share a key (WebDataset's rule:
the folder and the base name up to its first dot, ``split_key``). Interleaved documents:

    000042.json     {"segments": [{"text": "a cat"}, {"image": "0.png"}, {"text": "on a mat"}]}
    000042.0.png    the image the document calls "0.png"

and caption + image pairs the way img2dataset distributes CC3M, LAION or DataComp:

    000042.jpg      (or .png / .webp)
    000042.txt      the caption
    000042.json     metadata (url, size, ...), optional

A corpus whose images were encoded ahead of time (``transfusion data precompute``) holds
``{"latent": "0.npy"}`` segments (float (C, h, w) arrays) and a ``latents.json`` that names
the autoencoder.

Streaming. Training row ``r`` of every global batch reads stream ``r``: a fixed share of
the corpus (whole shards when there are at least as many shards as rows, else every k-th
record of one shard), epoch after epoch, in a shard order shuffled per epoch. A row takes
the next documents of its stream until one does not fit; that one opens the row of the
next step. The position of each stream (epoch, shard, record) is saved in checkpoints, so
a resumed run, on any number of processes, neither repeats nor skips a document. Worker
processes read, decode and queue documents ahead of the training loop.

Corrupt or unreadable records (bad JSON, a missing or undecodable image, a member larger than
``MAX_MEMBER_BYTES``, a truncated shard) are counted, reported with their shard and key, and
skipped. Images are opened as PNG, JPEG, WebP, GIF or BMP only (``fileio.open_image``).
"""

from __future__ import annotations

import glob
import io
import json
import random
import sys
import tarfile
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from transfusion.data.document import Document, Image, Text
from transfusion.data.ondisk import BadRecordError, document_kind, image_from_bytes
from transfusion.fileio import atomic_write, fit_image, open_image, to_pil

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CORPUS_AUTOENCODER = "autoencoder"  # the folder, inside a latent corpus, holding its autoencoder
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # a larger tar member is a corrupt record, left unread


# ---- writing


def write_shard(path: str | Path, documents: Iterable[Document], start: int = 0) -> int:
    """Write documents (images as PNG) into a tar shard, atomically; returns how many were written."""

    def png(pixels: torch.Tensor) -> bytes:
        buf = io.BytesIO()
        to_pil(pixels).save(buf, "PNG")
        return buf.getvalue()

    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with tarfile.open(tmp, "w") as tar:
            for count, doc in enumerate(documents, 1):
                add_record(tar, f"{start + count - 1:09d}", doc, (png(image.pixels) for image in doc.images),
                           "image", "png")

    atomic_write(path, write)
    return count


def add_record(tar: tarfile.TarFile, key: str, doc: Document, images: Iterable[bytes], kind: str, ext: str) -> None:
    """Append one document: ``KEY.json`` and a ``KEY.N.ext`` member per image, whose encoded
    bytes ``images`` gives in order; image segments read ``{kind: "N.ext"}``."""
    images = iter(images)
    segments, files = [], {}
    for seg in doc.segments:
        if isinstance(seg, Text):
            segments.append({"text": seg.text})
        else:
            name = f"{len(files)}.{ext}"
            files[name] = next(images)
            segments.append({kind: name})
    _add(tar, f"{key}.json", json.dumps({"segments": segments, "kind": doc.kind}).encode())
    for name, data in files.items():
        _add(tar, f"{key}.{name}", data)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def is_sharded(spec: str) -> bool:
    """Does a dataset spec name tar shards (a glob of .tar files or a folder of them)?"""
    path = Path(spec).expanduser()
    return spec.endswith(".tar") or (path.is_dir() and any(path.glob("*.tar")))


def is_latent_corpus(spec: str) -> bool:
    """Does a dataset spec name shards of precomputed latents (``transfusion data precompute``)?"""
    if not is_sharded(spec):
        return False
    path = Path(spec).expanduser()
    return ((path if path.is_dir() else path.parent) / "latents.json").is_file()


# ---- reading


def split_key(name: str) -> tuple[str, str]:
    """A member name -> (key, suffix) by WebDataset's rule: the key is the folder and the base
    name up to its first dot, the suffix the rest ("./a.b/x01.jpg" -> ("./a.b/x01", "jpg"))."""
    folder, slash, base = name.rpartition("/")
    stem, _, suffix = base.partition(".")
    return folder + slash + stem, suffix


def read_records(path: Path, start: int = 0
                 ) -> Iterator[tuple[int, str, dict[str, bytes | BadRecordError] | Exception]]:
    """(index, key, members) of each record of a shard from record ``start`` on; a shard that
    breaks off yields the error in place of members and ends. A member larger than
    ``MAX_MEMBER_BYTES`` is not read: its value is a ``BadRecordError`` (``decode_record`` raises it)."""
    index, key, members = -1, None, {}
    try:
        with tarfile.open(path, "r") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                k, suffix = split_key(info.name)
                if k != key:
                    if key is not None and index >= start:
                        yield index, key, members
                    index, key, members = index + 1, k, {}
                if index >= start and info.size > MAX_MEMBER_BYTES:  # the header's size: nothing is read
                    members[suffix] = BadRecordError(f"record {k}: {info.name} is {info.size} bytes, over the "
                                                     f"{MAX_MEMBER_BYTES} bytes a member may have (MAX_MEMBER_BYTES)")
                elif index >= start:  # records before the start are passed over unread
                    members[suffix] = tar.extractfile(info).read()
            if key is not None and index >= start:
                yield index, key, members
    except (tarfile.TarError, OSError, EOFError) as err:
        yield index + 1, f"<after {key}>", err


def decode_record(key: str, members: dict[str, bytes], image_size: int, latents: bool) -> Document:
    """One record -> a Document; ``BadRecordError`` if it is malformed.

    Two layouts: this library's interleaved documents (``KEY.json`` with "segments" naming the
    record's other members), and caption + image pairs as img2dataset writes them for CC3M,
    LAION or DataComp (``KEY.jpg|png|webp`` + ``KEY.txt``, any ``KEY.json`` being metadata).
    """
    oversized = next((m for m in members.values() if isinstance(m, BadRecordError)), None)
    if oversized is not None:
        raise oversized
    meta = None
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except ValueError as err:
            raise BadRecordError(f"record {key}: bad json ({err})") from None
    if not (isinstance(meta, dict) and "segments" in meta):
        return _pair_record(key, members, image_size, latents)
    try:
        raw = meta["segments"]
        if not isinstance(raw, list) or not raw:
            raise ValueError("'segments' must be a non-empty list")
    except (ValueError, KeyError, TypeError) as err:
        raise BadRecordError(f"record {key}: bad json ({err})") from None
    segments = []
    for seg in raw:
        if not isinstance(seg, dict) or len(seg) != 1:
            raise BadRecordError(f"record {key}: a segment must be {{'text': ...}}, {{'image': NAME}} or {{'latent': NAME}}")
        (kind, value), = seg.items()
        if kind == "text" and isinstance(value, str):
            segments.append(Text(value))
            continue
        if kind not in ("image", "latent") or value not in members:
            raise BadRecordError(f"record {key}: segment {seg} names no member of the record")
        if (kind == "latent") != latents:
            raise BadRecordError(f"record {key}: {kind} segment in a corpus of {'latents' if latents else 'images'}")
        try:
            if kind == "latent":
                array = np.load(io.BytesIO(members[value]), allow_pickle=False)
                image = Image(latents=torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
            else:
                with open_image(io.BytesIO(members[value])) as opened:
                    image = Image(fit_image(opened, image_size))
            segments.append(image)
        except Exception as err:  # an undecodable image or array
            raise BadRecordError(f"record {key}: cannot decode {value} ({type(err).__name__}: {err})") from None
    return Document(segments, kind=meta.get("kind") or document_kind(segments))


PAIR_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


def _pair_record(key: str, members: dict[str, bytes], image_size: int, latents: bool) -> Document:
    """An img2dataset record: one image member and its caption (``KEY.txt``, else a "caption" in KEY.json)."""
    if latents:
        raise BadRecordError(f"record {key}: an image + caption record in a corpus of latents")
    image = next((members[s] for s in PAIR_IMAGE_SUFFIXES if s in members), None)
    if image is None:
        raise BadRecordError(f"record {key} has neither {key}.json segments nor an image "
                             f"({', '.join(PAIR_IMAGE_SUFFIXES)}) with a caption")
    if "txt" in members:
        try:
            caption = members["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BadRecordError(f"record {key}: {key}.txt is not UTF-8 text") from None
    else:
        meta = json.loads(members["json"]) if "json" in members else {}
        caption = meta.get("caption") if isinstance(meta, dict) else None
        if not isinstance(caption, str):
            raise BadRecordError(f"record {key} has an image but no caption ({key}.txt or a json 'caption')")
    return Document.pair(caption, image_from_bytes(image, image_size, f"record {key}"), key=key)


@dataclass(frozen=True)
class Position:
    """Where a stream stands: the next record to read."""

    epoch: int = 0
    shard: int = 0  # index into the stream's shard order of this epoch
    record: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class ShardedCorpus:
    """The shards under ``spec`` (a folder or a glob of .tar files), read as ``streams`` streams."""

    def __init__(self, spec: str, image_size: int, streams: int, seed: int = 0):
        path = Path(spec).expanduser()
        pattern = str(path / "*.tar") if path.is_dir() else str(path)
        self.shards = sorted(Path(p) for p in glob.glob(pattern))
        if not self.shards:
            raise FileNotFoundError(f"no .tar shards match {spec!r}")
        folder = self.shards[0].parent
        self.latents = (folder / "latents.json").is_file()
        self.latent_info = json.loads((folder / "latents.json").read_text()) if self.latents else None
        self.image_size, self.streams, self.seed = image_size, streams, seed

    def _readable(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        """(key, members) of every record, in shard order; a shard ends where it breaks."""
        for path in self.shards:
            for _, key, members in read_records(path):
                if isinstance(members, Exception):
                    break
                yield key, members

    def head(self, n: int) -> list[Document]:
        """The first ``n`` readable documents, in shard order (evaluation sets)."""
        out = []
        for key, members in self._readable():
            try:
                out.append(decode_record(key, members, self.image_size, self.latents))
            except BadRecordError:
                continue
            if len(out) >= n:
                break
        return out

    def texts(self, n: int) -> list[str]:
        """The text of up to ``n`` documents, from the first shards (to train a tokenizer)."""
        out = []
        for _, members in self._readable():
            try:
                doc = json.loads(members.get("json", b"{}"))
                out.append(" ".join(seg["text"] for seg in doc.get("segments", []) if "text" in seg))
            except (ValueError, TypeError, AttributeError):
                continue
            if len(out) >= n:
                break
        return out

    def __repr__(self) -> str:
        return f"ShardedCorpus({len(self.shards)} shards in {self.shards[0].parent})"

    def share(self, stream: int) -> tuple[list[int], int, int]:
        """Stream ``stream``'s shards, and which records of them: every ``stride``-th from ``offset``."""
        n, S = len(self.shards), self.streams
        if n >= S:
            return [k for k in range(n) if k % S == stream], 1, 0
        sharers = [t for t in range(S) if t % n == stream % n]
        return [stream % n], len(sharers), sharers.index(stream)

    def order(self, stream: int, epoch: int) -> list[int]:
        shards, _, _ = self.share(stream)
        shards = list(shards)
        random.Random(f"{self.seed}/{stream}/{epoch}").shuffle(shards)
        return shards

    def documents(self, stream: int, at: Position) -> Iterator[tuple[Position, Document | None, str | None]]:
        """Endless (position after, document, None) or (position after, None, error message)."""
        _, stride, offset = self.share(stream)
        epoch, shard_i, record = at.epoch, at.shard, at.record
        while True:
            order = self.order(stream, epoch)
            found = False
            while shard_i < len(order):
                path = self.shards[order[shard_i]]
                for index, key, members in read_records(path, record):
                    after = Position(epoch, shard_i, index + 1)
                    if isinstance(members, Exception):
                        yield after, None, f"{path.name}: unreadable from record {index} on ({members}); rest of shard skipped"
                        break
                    if index % stride != offset:
                        continue
                    try:
                        doc = decode_record(key, members, self.image_size, self.latents)
                    except BadRecordError as err:
                        yield after, None, f"{path.name}: {err}"
                        continue
                    found = True
                    yield after, doc, None
                shard_i, record = shard_i + 1, 0
            if not found and at.epoch < epoch:
                raise RuntimeError(f"stream {stream} read a whole epoch of {self} without one readable document")
            epoch, shard_i = epoch + 1, 0


def corpus_autoencoder(corpus: ShardedCorpus, wanted: str):
    """The autoencoder a latent corpus was encoded with, for a run whose ``autoencoder.name``
    is ``wanted``: "train" takes the corpus's own; anything else must be that same autoencoder."""
    from transfusion.autoencoders import autoencoder_fingerprint, load_autoencoder

    info = corpus.latent_info
    folder = corpus.shards[0].parent / CORPUS_AUTOENCODER
    if "fingerprint" not in info or not folder.is_dir():
        raise ValueError(f"{corpus.shards[0].parent} holds latents of an unnamed autoencoder (no fingerprint in "
                         f"latents.json, or no {CORPUS_AUTOENCODER}/ folder): rerun `transfusion data precompute`")
    ae = load_autoencoder(folder if wanted == "train" else wanted)
    if autoencoder_fingerprint(ae) != info["fingerprint"]:
        raise ValueError(f"the corpus {corpus.shards[0].parent} holds latents of the autoencoder {info['autoencoder']} "
                         f"(fingerprint {info['fingerprint'][:12]}), but autoencoder.name={wanted} is another one; "
                         f"set autoencoder.name=train (the corpus's own) or precompute the corpus with it")
    return ae


class _Reader(torch.utils.data.IterableDataset):
    """Worker side: reads and decodes the documents of some streams, round robin."""

    def __init__(self, corpus: ShardedCorpus, positions: dict[int, Position]):
        self.corpus, self.positions = corpus, positions

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        streams = sorted(self.positions)
        mine = streams[info.id :: info.num_workers] if info else streams
        readers = {s: self.corpus.documents(s, self.positions[s]) for s in mine}
        while readers:
            for s in mine:
                after, doc, error = next(readers[s])
                yield s, after, doc, error


class StreamFeed:
    """Main-process side: the next documents of each of this process's streams."""

    def __init__(self, corpus: ShardedCorpus, positions: dict[int, Position], workers: int = 2):
        self.position = dict(positions)  # after the last document used
        self.skipped = 0
        self._buffers: dict[int, deque] = {s: deque() for s in positions}
        workers = min(workers, len(positions))
        loader = torch.utils.data.DataLoader(_Reader(corpus, positions), batch_size=None, num_workers=workers,
                                             collate_fn=_keep, prefetch_factor=8 if workers else None,
                                             persistent_workers=False)
        self._items = iter(loader)

    def _fill(self, stream: int) -> None:
        while not self._buffers[stream]:
            s, after, doc, error = next(self._items)
            if error is not None:  # (a resumed run meets it again, and skips it again)
                self.skipped += 1
                print(f"skipped a corrupt record: {error}", file=sys.stderr)
                continue
            self._buffers[s].append((after, doc))

    def take(self, stream: int) -> Iterator[Document]:
        """The stream's documents from where it stands; ``commit`` says how many were used."""
        self._taken = []
        while True:
            self._fill(stream)
            after, doc = self._buffers[stream].popleft()
            self._taken.append((after, doc))
            yield doc

    def commit(self, stream: int, used: int) -> None:
        """Of the documents ``take`` handed out, the first ``used`` went into a row; the rest
        go back to the front of the stream."""
        for item in reversed(self._taken[used:]):
            self._buffers[stream].appendleft(item)
        if used:
            self.position[stream] = self._taken[used - 1][0]
        self._taken = []


def _keep(item):
    return item


def positions_from_state(state: dict | None, rows: range) -> dict[int, Position]:
    saved = (state or {}).get("streams", {})
    return {r: Position(**saved[str(r)]) if str(r) in saved else Position() for r in rows}
