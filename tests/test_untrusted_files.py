"""Files from users (data folders, manifests, shards, Parquet) are opened as five image formats
only, with a pixel cap; a tar member is read only below a size cap; pyarrow is pinned past its
unpickling CVE."""

import io
import json
import tarfile
import tomllib
from pathlib import Path

import PIL.EpsImagePlugin
import pytest
from PIL import Image as PILImage

from transfusion.data import shards
from transfusion.data.ondisk import BadRecordError, image_from_bytes, load_image
from transfusion.data.shards import Position, ShardedCorpus, _add, decode_record
from transfusion.fileio import open_image

OTHER_FORMATS = ("TIFF", "PPM", "TGA", "PCX", "ICO", "SGI", "QOI")


def encoded(fmt: str, size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, "red").save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ("PNG", "JPEG", "WEBP", "GIF", "BMP"))
def test_the_five_formats_open(fmt):
    with open_image(io.BytesIO(encoded(fmt))) as image:
        assert image.format == fmt and image.size == (8, 8)


@pytest.mark.parametrize("fmt", OTHER_FORMATS)
def test_every_reader_refuses_other_formats_with_a_clear_error(fmt, tmp_path):
    data = encoded(fmt)
    with PILImage.open(io.BytesIO(data)) as image:  # Pillow alone would read it
        assert image.format == fmt
    message = r"not an image of a supported format \(PNG, JPEG, WEBP, GIF, BMP\)"
    with pytest.raises(PILImage.UnidentifiedImageError, match=message):
        open_image(io.BytesIO(data))
    path = tmp_path / "photo.png"  # the suffix does not matter: the content is read
    path.write_bytes(data)
    with pytest.raises(BadRecordError, match=message):
        load_image(path, 16)  # image folders and JSONL manifests
    with pytest.raises(BadRecordError, match=message):
        image_from_bytes(data, 16, "row 0")  # Parquet cells and img2dataset shards
    segments = {"segments": [{"text": "a cat"}, {"image": "0.png"}]}
    with pytest.raises(BadRecordError, match=message):
        decode_record("k", {"json": json.dumps(segments).encode(), "0.png": data}, 16, latents=False)


def test_a_parquet_row_in_another_format_is_a_bad_record(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from transfusion.data.parquet import ParquetDocuments

    pq.write_table(pa.table({"image": [encoded("PNG"), encoded("TIFF")], "text": ["good", "tiff"]}),
                   tmp_path / "rows.parquet")
    rows = ParquetDocuments(str(tmp_path / "rows.parquet"), image_size=16)
    assert rows[0].images[0].pixels.shape == (3, 16, 16)
    with pytest.raises(BadRecordError, match="not an image of a supported format"):
        rows[1]


def test_eps_never_reaches_ghostscript(monkeypatch):
    calls = []
    monkeypatch.setattr(PIL.EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(BadRecordError, match="not an image of a supported format"):
        image_from_bytes(encoded("EPS"), 16, "row 0")
    assert calls == []


def test_a_decompression_bomb_is_refused_before_decoding(monkeypatch, tmp_path):
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # Pillow itself only warns up to 200
    path = tmp_path / "bomb.png"
    path.write_bytes(encoded("PNG", size=(15, 10)))
    with pytest.raises(BadRecordError, match="15x10 pixels; at most 100"):
        load_image(path, 16)
    with pytest.raises(PILImage.DecompressionBombError, match="15x10 pixels"):
        open_image(io.BytesIO(encoded("PNG", size=(15, 10))))
    with open_image(io.BytesIO(encoded("PNG", size=(15, 10))), max_pixels=150) as image:  # a caller's own cap
        assert image.size == (15, 10)


def pair(tar: tarfile.TarFile, key: str, caption: bytes) -> None:
    _add(tar, f"{key}.png", encoded("PNG"))
    _add(tar, f"{key}.txt", caption)


def test_a_tar_member_over_the_cap_is_a_bad_record_left_unread(tmp_path, monkeypatch):
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        pair(tar, "a", b"first")
        pair(tar, "b", b"x" * 5000)  # over the cap below
        pair(tar, "c", b"third")
    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 4096)
    read = []
    extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile",
                        lambda self, info: read.append(info.name) or extract(self, info))
    stream = ShardedCorpus(str(tmp_path), image_size=16, streams=1).documents(0, Position())
    outcomes = [next(stream)[1:] for _ in range(3)]
    assert outcomes[0][0].segments[0].text == "first" and outcomes[2][0].segments[0].text == "third"
    assert outcomes[1][0] is None and "b.txt is 5000 bytes, over the 4096 bytes a member may have" in outcomes[1][1]
    assert "b.txt" not in read and "b.png" in read


def test_pyarrow_is_pinned_past_its_unpickling_cve():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert "pyarrow>=14.0.1" in project["optional-dependencies"]["data"]
