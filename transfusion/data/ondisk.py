"""Users' own data on disk: a JSONL manifest of interleaved documents, or a folder of
images with caption files.

JSONL manifest, one document per line; image paths are relative to the manifest's folder
(or absolute):

    {"segments": [{"text": "a cat"}, {"image": "images/cat.png"}]}
    {"segments": [{"text": "before:"}, {"image": "a.jpg"}, {"text": "after:"}, {"image": "b.jpg"}]}
    {"segments": [{"image": "a.png"}, {"text": "make it blue"}, {"image": "b.png"}]}      # an edit

A record of exactly [image, text, image] is an editing triple (kind "edit": the first image is
clean context and carries no loss); ``"kind": "interleaved"`` in the record keeps all its images
noised instead.

Image folder (searched recursively), each image next to a caption file with its name:

    photos/cat.png   photos/cat.txt   photos/dogs/dog.jpg   photos/dogs/dog.txt

Images are opened as PNG, JPEG, WebP, GIF or BMP only, refused above Pillow's pixel cap before
decoding (``fileio.open_image``), converted to RGB, center-cropped to a square and resized to
``image_size`` x ``image_size`` (``fileio.fit_image``: the rule for every image read from disk). A bad record raises ``BadRecordError`` naming the file
(and the manifest line); with ``on_error="skip"`` it is counted in ``.skipped`` and the
next good record is returned instead, so one broken file does not end a long run.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch

from transfusion.data.document import Document, Image, Segment, Text
from transfusion.fileio import fit_image, open_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class BadRecordError(ValueError):
    """A manifest line or a file that cannot be turned into a document."""


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """Read an image file as a float tensor (3, image_size, image_size) in [-1, 1].

    Alpha is dropped (``convert("RGB")``); the largest centered square is kept.
    Raises FileNotFoundError or BadRecordError (not an image / corrupt).
    """
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with open_image(path) as opened:
            return fit_image(opened, image_size)  # decodes the whole file, so corruption shows here
    except Exception as err:  # PIL reports corrupt files as OSError, SyntaxError, ValueError...
        raise BadRecordError(f"cannot read image {path}: {err}") from err


def image_from_bytes(data: bytes, image_size: int, where: str) -> torch.Tensor:
    """Encoded image bytes (a tar member, a Parquet cell) -> (3, image_size, image_size) in [-1, 1],
    by the one crop rule; ``BadRecordError`` ("WHERE: cannot decode its image ...") if they do not decode."""
    try:
        with open_image(io.BytesIO(data)) as opened:
            return fit_image(opened, image_size)
    except Exception as err:  # PIL reports corrupt data as OSError, SyntaxError, ValueError...
        raise BadRecordError(f"{where}: cannot decode its image ({type(err).__name__}: {err})") from None


def document_kind(segments: list[Segment]) -> str:
    """"pair" for exactly [text, image], "edit" for exactly [image, text, image] (an editing
    triple: source, instruction, output), "text" for text only, else "interleaved"."""
    types = [type(s) for s in segments]
    if types == [Text, Image]:
        return "pair"
    if types == [Image, Text, Image]:
        return "edit"
    if all(t is Text for t in types):
        return "text"
    return "interleaved"


class _SkippingDataset:
    """``__getitem__`` for on-disk datasets: raise on a bad record, or skip it.

    Subclasses set ``on_error`` and ``skipped`` and implement ``__len__`` and ``_load(i)``.
    In skip mode a bad record is replaced by the next good one and ``skipped`` counts bad
    records met so far (a record met twice counts twice; each DataLoader worker process
    keeps its own count).
    """

    def __getitem__(self, i: int) -> Document:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} documents")
        if self.on_error == "raise":
            return self._load(i % len(self))
        for offset in range(len(self)):
            try:
                return self._load((i + offset) % len(self))
            except (BadRecordError, FileNotFoundError) as err:
                last_error = err
                self.skipped += 1
                if self.skipped == 1:
                    message = f"skipping bad record ({err}); later ones are only counted in .skipped"
                    warnings.warn(message, stacklevel=2)
        raise BadRecordError(f"all {len(self)} records are bad; the last error: {last_error}")


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


class JsonlDocuments(_SkippingDataset):
    """Documents listed in a JSONL manifest, read lazily.

    Construction only records where each non-blank line starts, so a manifest of millions
    of lines opens at once; a line is parsed and its images read in ``__getitem__``.
    Errors name ``path:line``: malformed JSON, no "segments" list, a segment that is not
    exactly one of {"text": str} / {"image": str}, a missing or unreadable image.
    """

    def __init__(self, path: str | Path, image_size: int = 32, on_error: str = "raise"):
        _check_on_error(on_error)
        self.path = Path(path)
        self.image_size = image_size
        self.on_error = on_error
        self.skipped = 0
        self.offsets: list[int] = []  # byte offset of each document line
        self.line_numbers: list[int] = []  # 1-based, for error messages
        with open(self.path, "rb") as f:
            offset = 0
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    self.offsets.append(offset)
                    self.line_numbers.append(line_number)
                offset += len(line)
        if not self.offsets:
            raise ValueError(f"{self.path}: the manifest is empty (expected one JSON document per line)")

    def __len__(self) -> int:
        return len(self.offsets)

    def _load(self, i: int) -> Document:
        where = f"{self.path}:{self.line_numbers[i]}"
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            line = f.readline()
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadRecordError(f"{where}: malformed JSON: {err}") from err
        if not isinstance(record, dict) or not isinstance(record.get("segments"), list):
            shown = line.decode(errors="replace").strip()[:80]
            raise BadRecordError(f'{where}: expected an object with a "segments" list, got {shown}')
        if not record["segments"]:
            raise BadRecordError(f'{where}: "segments" is empty')
        segments = [self._segment(s, where) for s in record["segments"]]
        inferred = document_kind(segments)
        kind = record.get("kind") or inferred
        if kind not in (inferred, "interleaved"):
            raise BadRecordError(f'{where}: "kind" {kind!r} does not fit its segments (expected {inferred!r} or '
                                 f'"interleaved")')
        return Document(segments, kind=kind)

    def _segment(self, segment, where: str) -> Segment:
        if isinstance(segment, dict) and len(segment) == 1:
            [(key, value)] = segment.items()
            if key == "text" and isinstance(value, str):
                return Text(value)
            if key == "image" and isinstance(value, str):
                image_path = self.path.parent / value  # an absolute value replaces the folder
                try:
                    return Image(load_image(image_path, self.image_size))
                except FileNotFoundError as err:
                    raise FileNotFoundError(f"{where}: {err}") from err
                except BadRecordError as err:
                    raise BadRecordError(f"{where}: {err}") from err
        raise BadRecordError(
            f'{where}: unknown segment type {json.dumps(segment)[:80]}; '
            f'expected {{"text": "..."}} or {{"image": "path"}}'
        )


class ImageFolderDocuments(_SkippingDataset):
    """(caption, image) pairs from a folder: every image file with a sibling NAME.txt.

    The folder is searched recursively for .png/.jpg/.jpeg/.webp/.bmp (any letter case),
    in sorted path order. Images without a caption file raise a ValueError listing the
    first few, or with ``on_error="skip"`` are left out and counted in ``skipped``.
    """

    def __init__(self, folder: str | Path, image_size: int = 32, on_error: str = "raise"):
        _check_on_error(on_error)
        self.folder = Path(folder)
        self.image_size = image_size
        self.on_error = on_error
        self.skipped = 0
        if not self.folder.is_dir():
            raise NotADirectoryError(f"image folder not found: {self.folder}")
        images = sorted(
            p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not images:
            raise ValueError(f"{self.folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
        uncaptioned = [p for p in images if not p.with_suffix(".txt").is_file()]
        if uncaptioned and on_error == "raise":
            listed = "\n  ".join(str(p) for p in uncaptioned[:5])
            more = f"\n  ... and {len(uncaptioned) - 5} more" if len(uncaptioned) > 5 else ""
            raise ValueError(
                f"{self.folder}: {len(uncaptioned)} of {len(images)} images have no caption file "
                f"(NAME.txt next to NAME.png):\n  {listed}{more}"
            )
        if uncaptioned:
            self.skipped = len(uncaptioned)
            warnings.warn(f"{self.folder}: skipping {len(uncaptioned)} images without a caption file")
        self.images = [p for p in images if p.with_suffix(".txt").is_file()]
        if not self.images:
            raise ValueError(f"{self.folder}: none of the {len(images)} images has a caption file")

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, i: int) -> Document:
        image_path = self.images[i]
        caption_path = image_path.with_suffix(".txt")
        try:
            caption = caption_path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as err:
            raise BadRecordError(f"caption file {caption_path} is not UTF-8 text: {err}") from err
        return Document.pair(caption, load_image(image_path, self.image_size), path=str(image_path))
