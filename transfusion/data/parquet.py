"""Caption + image pairs in Parquet files, the layout of Hugging Face datasets (through pyarrow).

    data.dataset=data/train-00000-of-00004.parquet      one file
    data.dataset=data/{split}                           a folder of *.parquet (a glob works too)

The image column is the first of ``IMAGE_COLUMNS`` present: a struct of ``{"bytes", "path"}``
(the datasets ``Image`` feature) or plain binary; the caption column the first of
``CAPTION_COLUMNS``. Files are opened lazily and read one row group at a time; every image is
opened as PNG, JPEG, WebP, GIF or BMP only (``fileio.open_image``) and goes through the one
crop-and-resize rule (``fileio.fit_image``). A row whose image does not decode raises ``BadRecordError`` (or, with ``on_error="skip"``, is counted and skipped).
"""

from __future__ import annotations

import bisect
import glob
from pathlib import Path

from transfusion.data.document import Document
from transfusion.data.ondisk import BadRecordError, _check_on_error, _SkippingDataset, image_from_bytes

IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "img")
CAPTION_COLUMNS = ("text", "caption", "txt", "sentence", "prompt")


def is_parquet(spec: str) -> bool:
    path = Path(spec).expanduser()
    return spec.endswith(".parquet") or (path.is_dir() and any(path.glob("*.parquet")))


class ParquetDocuments(_SkippingDataset):
    """(caption, image) documents, one per row of the Parquet files under ``spec``."""

    def __init__(self, spec: str, image_size: int = 32, on_error: str = "raise"):
        import pyarrow.parquet as pq

        _check_on_error(on_error)
        path = Path(spec).expanduser()
        pattern = str(path / "*.parquet") if path.is_dir() else str(path)
        self.files = sorted(Path(p) for p in glob.glob(pattern))
        if not self.files:
            raise FileNotFoundError(f"no .parquet files match {spec!r}")
        self.image_size, self.on_error, self.skipped = image_size, on_error, 0
        self.groups: list[tuple[int, int]] = []  # (file, row group) in order
        self.starts: list[int] = []  # first row of each group
        rows = 0
        for f, file in enumerate(self.files):
            meta = pq.ParquetFile(file)
            names = meta.schema_arrow.names
            if f == 0:
                self.image_column = next((c for c in IMAGE_COLUMNS if c in names), None)
                self.caption_column = next((c for c in CAPTION_COLUMNS if c in names), None)
                if self.image_column is None or self.caption_column is None:
                    raise ValueError(f"{file}: expected an image column ({', '.join(IMAGE_COLUMNS)}) and a caption "
                                     f"column ({', '.join(CAPTION_COLUMNS)}); it has {', '.join(names)}")
            elif not {self.image_column, self.caption_column} <= set(names):
                raise ValueError(f"{file}: lacks the {self.image_column!r} / {self.caption_column!r} columns of "
                                 f"{self.files[0]}")
            for g in range(meta.num_row_groups):
                self.groups.append((f, g))
                self.starts.append(rows)
                rows += meta.metadata.row_group(g).num_rows
        self.length = rows
        if not rows:
            raise ValueError(f"{spec}: the Parquet files hold no rows")
        self._cached: tuple[int, dict] | None = None

    def __len__(self) -> int:
        return self.length

    def _group(self, index: int) -> dict:
        if self._cached is None or self._cached[0] != index:
            import pyarrow.parquet as pq

            f, g = self.groups[index]
            table = pq.ParquetFile(self.files[f]).read_row_group(g, columns=[self.image_column, self.caption_column])
            self._cached = (index, table.to_pydict())
        return self._cached[1]

    def _load(self, i: int) -> Document:
        group = bisect.bisect_right(self.starts, i) - 1
        rows = self._group(group)
        row = i - self.starts[group]
        image, caption = rows[self.image_column][row], rows[self.caption_column][row]
        where = f"{self.files[self.groups[group][0]]} row {i}"
        data = image.get("bytes") if isinstance(image, dict) else image
        if not isinstance(data, (bytes, bytearray)) or not isinstance(caption, str):
            raise BadRecordError(f"{where}: expected image bytes and a caption string")
        return Document.pair(caption.strip(), image_from_bytes(data, self.image_size, where), row=i)
