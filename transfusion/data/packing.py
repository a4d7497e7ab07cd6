"""Packing documents into fixed-size rows: the model's input format.

A document becomes ``<bos> ... <eos>`` where each text segment is its token ids and each
image is ``<boi> p_1 ... p_n <eoi>`` (n patch positions in raster order). Several documents
share a row; ``doc_ids`` keep attention and loss from crossing their boundaries, and
positions restart at 0 in every document.

Next-token targets follow the paper's section 3.4 (L_LM on text tokens only): a position has an LM target when neither it nor
the next position is a patch and both are in the same document. So BOI is a target (the
model learns when to start an image) while the position whose input is BOI has none.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from transfusion.batch import IGNORE, ImageGroup
from transfusion.config import DiffusionConfig
from transfusion.data.document import Document, Image, Text, Tokens
from transfusion.diffusion import CONTEXT_T
from transfusion.tokenizer import Tokenizer

PATCH = -1  # placeholder id for a patch position in a layout
CONTEXT_IMAGE = 0  # the noise cap of an image given as clean context: fed at CONTEXT_T, no loss on it


@dataclass
class Layout:
    """One document as a flat sequence: token ids with PATCH placeholders, and its images."""

    ids: list[int]
    # (start, latent, max_t); before encoding (BatchBuilder) the image's pixels stand in for its latent
    images: list[tuple[int, torch.Tensor, int]] = field(default_factory=list)
    given: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of text that is no LM target
    references: list[int] = field(default_factory=list)  # per image, the image (of this layout) it edits, or -1


@dataclass
class PackedBatch:
    tokens: torch.Tensor  # (B, L) long, pad id at padding and patch positions
    positions: torch.Tensor  # (B, L) long, position within the document
    doc_ids: torch.Tensor  # (B, L) long, unique per document in the batch; -1 for padding
    image_ids: torch.Tensor  # (B, L) long, image index for patches, -1 elsewhere
    targets: torch.Tensor  # (B, L) long, next token or IGNORE
    latents: list[torch.Tensor]  # per image, clean (C, h, w)
    max_t: torch.Tensor  # (N,) long, the largest timestep each image may be noised to; 0: clean context
    index: list[torch.Tensor]  # per image, (P,) flat positions row * L + col of its patches
    # the diffusion draw of a training batch (``NoiseProcess.draw``, made by ``BatchBuilder``): per
    # image its timestep (N,) and its noise (C, h, w); the loss of a batch with images needs them
    t: torch.Tensor | None = None
    noise: list[torch.Tensor] | None = None
    # per image (N,) long, the image of this batch it edits (its source, in the same document), or -1
    reference: torch.Tensor | None = None
    # per image, its pixels (C, H, W) while the batch is not encoded yet (``pack(..., encoded=False)``):
    # ``latents`` is empty until the autoencoder fills it (``BatchBuilder``)
    pixels: list[torch.Tensor] | None = None

    def to(self, device: torch.device | str) -> "PackedBatch":
        """The same batch with every tensor on ``device``."""
        def move(v):
            if v is None:
                return None
            return [t.to(device) for t in v] if isinstance(v, list) else v.to(device)

        return PackedBatch(**{k: move(v) for k, v in vars(self).items()})

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_images(self) -> int:
        return len(self.index)

    def image_rows(self) -> list[int]:
        """The row each image sits in."""
        return [int(i[0]) // self.tokens.shape[1] for i in self.index]

    @staticmethod
    def concat(batches: list["PackedBatch"]) -> "PackedBatch":
        """Stack the rows of several batches (same ``seq_len``) into one batch."""
        if len(batches) == 1:
            return batches[0]
        seq_len = batches[0].tokens.shape[1]
        doc_ids, image_ids, index = [], [], []
        docs = images = rows = 0
        for b in batches:
            doc_ids.append(torch.where(b.doc_ids >= 0, b.doc_ids + docs, -1))
            image_ids.append(torch.where(b.image_ids >= 0, b.image_ids + images, -1))
            index.extend(i + rows * seq_len for i in b.index)
            docs += int(b.doc_ids.max()) + 1
            images += b.num_images
            rows += b.rows
        cat = lambda name: torch.cat([getattr(b, name) for b in batches])  # noqa: E731
        drawn = all(b.t is not None for b in batches)
        reference, base = [], 0
        for b in batches:
            own = b.reference if b.reference is not None else torch.full((b.num_images,), -1, dtype=torch.long)
            reference.append(torch.where(own >= 0, own + base, -1))
            base += b.num_images
        return PackedBatch(
            cat("tokens"), cat("positions"), torch.cat(doc_ids), torch.cat(image_ids), cat("targets"),
            [lat for b in batches for lat in b.latents], cat("max_t"), index,
            cat("t") if drawn else None, [n for b in batches for n in b.noise] if drawn else None,
            torch.cat(reference), [p for b in batches for p in b.pixels] if batches[0].pixels is not None else None,
        )

    @property
    def num_tokens(self) -> int:
        """Positions holding a document (not padding)."""
        return int((self.doc_ids >= 0).sum())

    @property
    def num_text_targets(self) -> int:
        return int((self.targets != IGNORE).sum())

    def text_document_positions(self, is_image: torch.Tensor | None = None) -> int:
        """Positions of documents without an image (text only). ``is_image`` (B, L) marks image
        positions where ``image_ids`` no longer do (VQ codes as tokens); default: the patches."""
        is_image = self.image_ids >= 0 if is_image is None else is_image
        with_images = torch.isin(self.doc_ids, self.doc_ids[is_image])
        return int(((self.doc_ids >= 0) & ~with_images).sum())

    def shape_groups(self) -> list[list[int]]:
        """Image indices grouped by latent shape, so the image layers run once per shape."""
        by_shape: dict[tuple, list[int]] = {}
        for i, lat in enumerate(self.latents):
            by_shape.setdefault(tuple(lat.shape), []).append(i)
        return list(by_shape.values())

    def image_group(self, ids: list[int], latents: torch.Tensor, t: torch.Tensor) -> ImageGroup:
        """The model input for images ``ids``: their (noisy) latents (N, C, h, w) and t (N,), and
        the clean latents of the images they edit (zeros for none; None when none edits)."""
        refs = [] if self.reference is None else self.reference[ids].tolist()
        reference = None
        if any(r >= 0 for r in refs):
            reference = torch.stack([self.latents[r].to(latents) if r >= 0 else torch.zeros_like(latents[0])
                                     for r in refs])
        return ImageGroup(latents, t, torch.stack([self.index[i] for i in ids]), reference)

    def clean_image_groups(self) -> list[ImageGroup]:
        """Every image as clean context (at ``CONTEXT_T``), one group per latent shape (prompts, scoring)."""
        return [self.image_group(ids, torch.stack([self.latents[i] for i in ids]),
                                 torch.full((len(ids),), CONTEXT_T, dtype=torch.long, device=self.tokens.device))
                for ids in self.shape_groups()]

    def images_as_tokens(self, codes: list[torch.Tensor], offset: int) -> "PackedBatch":
        """The same rows with image i's patch positions holding its VQ codes ``codes[i]`` (h, w)
        as tokens ``offset + code``: a text-only batch whose targets are every next token of a
        document (images included), for ``image.objective=tokens``."""
        tokens = self.tokens.clone()
        flat = tokens.view(-1)
        for index, c in zip(self.index, codes):
            flat[index] = c.flatten().to(flat.device) + offset
        same_doc = (self.doc_ids[:, 1:] == self.doc_ids[:, :-1]) & (self.doc_ids[:, :-1] >= 0)
        targets = torch.full_like(tokens, IGNORE)
        targets[:, :-1] = torch.where(same_doc, tokens[:, 1:], IGNORE)
        text_to_text = (self.image_ids[:, :-1] < 0) & (self.image_ids[:, 1:] < 0)
        given = same_doc & text_to_text & (self.targets[:, :-1] == IGNORE)  # given text stays no target
        targets[:, :-1] = targets[:, :-1].masked_fill(given, IGNORE)
        for index, cap in zip(self.index, self.max_t.tolist()):
            if cap == CONTEXT_IMAGE:  # a context image's codes are given, not predicted
                targets.view(-1)[index - 1] = IGNORE
        empty = torch.zeros(0, dtype=torch.long, device=tokens.device)
        return PackedBatch(tokens, self.positions, self.doc_ids, torch.full_like(self.image_ids, -1), targets,
                           [], empty, [])


def arrange(doc: Document, rng: random.Random, cfg: DiffusionConfig) -> tuple[list, list[int]]:
    """Training-time order of a document's segments and each image's noise cap.

    Captioned pairs lose their caption with probability ``caption_dropout`` (so the model
    learns unconditional images for guidance), else become image-first with probability
    ``image_first_prob``, with noise capped at ``image_first_max_t`` (the paper's section 4.3.4).
    Edits ``[source, instruction, target]`` keep the source clean (cap ``CONTEXT_IMAGE``: no
    noise, no loss) and the instruction given (no LM targets: after an image the model keeps
    writing captions, not instructions), and lose the instruction, or everything but the target, each with
    probability ``caption_dropout``: the image-only and unconditional branches of
    InstructPix2Pix-style guidance (Brooks et al. 2023), learnt as the paper learns CFG's.
    """
    if doc.kind == "pair":
        text, image = doc.segments
        u = rng.random()
        if u < cfg.caption_dropout:
            return [image], [cfg.timesteps]
        if u < cfg.caption_dropout + (1 - cfg.caption_dropout) * cfg.image_first_prob:
            return [image, text], [cfg.image_first_max_t]
    if doc.kind == "edit":
        source, instruction, target = doc.segments
        u = rng.random()
        if u < cfg.caption_dropout:  # nothing given: the unconditional branch of guidance
            return [target], [cfg.timesteps]
        if u < 2 * cfg.caption_dropout:  # the source without the instruction: the image-only branch
            return [source, target], [CONTEXT_IMAGE, cfg.timesteps]
        return [source, Text(instruction.text, loss=False), target], [CONTEXT_IMAGE, cfg.timesteps]
    segments = list(doc.segments)
    return segments, [cfg.timesteps] * sum(isinstance(s, Image) for s in segments)


def layout(
    segments: list,
    latents: list[torch.Tensor],
    max_t: list[int],
    tokenizer: Tokenizer,
    num_patches: Callable[[tuple[int, int]], int],
    close: bool = True,
) -> Layout:
    """Token sequence of a document whose images are already latents (one per Image segment).

    An image to be denoised (cap > 0) after a clean context image (cap ``CONTEXT_IMAGE``: in
    training only an edit's source) edits the last such image: its ``references`` entry."""
    out = Layout([tokenizer.bos_id])
    images = iter(zip(latents, max_t))
    last_context = -1
    for seg in segments:
        if isinstance(seg, Text):
            start = len(out.ids)
            out.ids.extend(tokenizer.encode(seg.text))
            if not seg.loss:
                out.given.append((start, len(out.ids)))
        elif isinstance(seg, Tokens):
            out.ids.extend(seg.ids)
        elif isinstance(seg, Image):
            latent, cap = next(images)
            out.ids.append(tokenizer.boi_id)
            out.references.append(-1 if cap == CONTEXT_IMAGE else last_context)
            if cap == CONTEXT_IMAGE:
                last_context = len(out.images)
            out.images.append((len(out.ids), latent, cap))
            out.ids.extend([PATCH] * num_patches(tuple(latent.shape[1:])))
            out.ids.append(tokenizer.eoi_id)
        else:
            raise TypeError(f"unknown segment type {type(seg).__name__}")
    if close:
        out.ids.append(tokenizer.eos_id)
    return out


def truncate(lay: Layout, seq_len: int, what: str = "document") -> Layout:
    """Cut a text-only layout to ``seq_len``; a layout with images that does not fit is an error."""
    if len(lay.ids) <= seq_len:
        return lay
    if lay.images:
        raise ValueError(
            f"a {what} with images needs {len(lay.ids)} tokens but data.seq_len is {seq_len}; "
            f"raise data.seq_len (and model.max_seq_len) or use smaller images"
        )
    return Layout(lay.ids[:seq_len])


def pack(
    layouts: Iterable[Layout], rows: int, seq_len: int, pad_id: int, one_per_row: bool = False,
    align_end: bool = False, patience: int = 0, encoded: bool = True,
) -> tuple[PackedBatch, int]:
    """Place layouts first-fit into ``rows`` rows of ``seq_len``; stops at the first that fits
    nowhere, or with ``patience`` after that many layouts in a row that fit nowhere (they are
    dropped: a fuller row for some skipped documents).

    ``layouts`` may be a lazy iterator: it is consumed up to the layout that ends it. With ``one_per_row``, layout i goes in row i, at its start, or with ``align_end`` at
    its end (left padding: every prompt of a generation batch then ends at the same column).
    ``encoded=False``: the layouts' images are pixels, which the batch holds in ``pixels``.
    Returns the batch and how many layouts it holds.
    """
    fill = [0] * rows
    placed: list[tuple[int, int, Layout]] = []  # (row, start, layout)
    misses = 0
    for i, lay in enumerate(layouts):
        if one_per_row:
            row = i if i < rows and len(lay.ids) <= seq_len else None
        else:
            row = next((r for r in range(rows) if fill[r] + len(lay.ids) <= seq_len), None)
        if row is None:
            misses += 1
            if misses > patience or not placed:
                break
            continue
        misses = 0
        placed.append((row, seq_len - len(lay.ids) if align_end else fill[row], lay))
        fill[row] += len(lay.ids)
    if not placed:
        raise ValueError("no document fits in a row: raise data.seq_len")

    tokens = torch.full((rows, seq_len), pad_id, dtype=torch.long)
    positions = torch.zeros(rows, seq_len, dtype=torch.long)
    doc_ids = torch.full((rows, seq_len), -1, dtype=torch.long)
    image_ids = torch.full((rows, seq_len), -1, dtype=torch.long)
    targets = torch.full((rows, seq_len), IGNORE, dtype=torch.long)
    images, max_t, index, reference = [], [], [], []
    for doc_index, (row, start, lay) in enumerate(placed):
        ids = torch.tensor(lay.ids, dtype=torch.long)
        n = len(ids)
        span = slice(start, start + n)
        is_patch = ids == PATCH
        tokens[row, span] = torch.where(is_patch, pad_id, ids)
        positions[row, span] = torch.arange(n)
        doc_ids[row, span] = doc_index
        has_target = ~is_patch[:-1] & ~is_patch[1:]
        targets[row, start : start + n - 1] = torch.where(has_target, ids[1:], IGNORE)
        for a, b in lay.given:  # the positions that would predict given text; the one after it still predicts
            targets[row, start + a - 1 : start + b - 1] = IGNORE
        first = len(images)
        refs = lay.references + [-1] * (len(lay.images) - len(lay.references))  # images appended by hand edit nothing
        reference += [first + r if r >= 0 else -1 for r in refs]
        for img_start, image, cap in lay.images:
            P = int(is_patch[img_start:].long().cumprod(0).sum())
            image_ids[row, start + img_start : start + img_start + P] = len(images)
            index.append(row * seq_len + start + img_start + torch.arange(P))
            images.append(image)
            max_t.append(cap)
    batch = PackedBatch(
        tokens, positions, doc_ids, image_ids, targets, images if encoded else [],
        torch.tensor(max_t, dtype=torch.long), index, reference=torch.tensor(reference, dtype=torch.long),
        pixels=None if encoded else images,
    )
    return batch, len(placed)
