"""Documents: ordered lists of text and image segments.

A document is what a dataset yields and what the packer turns into a batch row:

    Document([Text("first a red circle, then a green triangle:"), Image(a), Image(b)])

Images are float tensors of shape (C, H, W) with values in [-1, 1] (pixels), before any
autoencoder; only a corpus of precomputed latents (``transfusion data precompute``) holds
images already encoded, ``Image(latents=...)``. ``kind`` tells the batch builder how it may
reorder a document:
``"pair"`` (one caption + one image: may be flipped to image-first or lose its caption),
``"edit"`` (source image, instruction, edited image: the source is clean context),
``"interleaved"`` and ``"text"`` (kept as they are).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

import numpy as np
import torch


@dataclass(frozen=True)
class Text:
    text: str
    loss: bool = True  # False: given, not predicted (an editing instruction): its tokens are no LM targets


@dataclass(frozen=True)
class Tokens:
    """Text given as token ids (what generation sampled), laid out exactly as they are."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class Image:
    """An image: its pixels, or (a corpus of precomputed latents) its latents; exactly one of them."""

    pixels: torch.Tensor | None = None  # (C, H, W) float in [-1, 1]
    latents: torch.Tensor | None = None  # (C, h, w) float: the image already encoded by an autoencoder

    def __post_init__(self):
        if (self.pixels is None) == (self.latents is None):
            raise ValueError("an Image holds either pixels or latents")
        name, p = ("pixels", self.pixels) if self.latents is None else ("latents", self.latents)
        if not isinstance(p, torch.Tensor) or p.ndim != 3 or not p.is_floating_point():
            raise ValueError(
                f"Image.{name} must be a float tensor of shape (C, H, W), got "
                f"{type(p).__name__} {tuple(getattr(p, 'shape', ()))}"
            )


Segment = Union[Text, Tokens, Image]
DocumentKind = Literal["pair", "edit", "interleaved", "text"]


@dataclass
class Document:
    segments: list[Segment]
    kind: DocumentKind = "interleaved"
    meta: dict = field(default_factory=dict)  # e.g. the scene that generated a shapes image

    @classmethod
    def pair(cls, caption: str, pixels: torch.Tensor, **meta) -> "Document":
        return cls([Text(caption), Image(pixels)], kind="pair", meta=meta)

    @property
    def images(self) -> list[Image]:
        return [s for s in self.segments if isinstance(s, Image)]

    @property
    def caption(self) -> str:
        return " ".join(s.text for s in self.segments if isinstance(s, Text))


def split_rows(n: int, split: str, test_fraction: float, seed: int) -> np.ndarray:
    """The rows of an n-item source in a fixed ``split``: a permutation seeded by ``seed``, its
    last ``test_fraction`` (at least one row) "test", the rest "train"."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_fraction))
    return order[n - n_test :] if split == "test" else order[: n - n_test]
