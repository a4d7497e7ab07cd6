"""Image makers: one per image objective, behind one small interface, against a narrow ``Forward``.

An image maker makes a new image for rows whose last input was BOI, and writes a finished
image into the cache as context:

    make(cache, rows, positions, req, generators, contexts, boi_hidden) -> latents or codes (G, ...)
    write(cache, rows, made, positions)

``DiffusionImages`` (Transfusion) denoises all n patches at once against the cached prefix;
``TokenImages`` (the Chameleon baseline) samples VQ codes one token at a time. Both guide
with the branches of ``decoding.guidance_branches``, run as extra rows of one batch.

A maker sees the model only through ``Forward`` (``forward.ModelForward`` implements it) and
the plain values of ``MakerSettings``; it never holds the Engine that built it. Turning pixels
into latents or codes and back is the codec's (``codec.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from transfusion.batch import ImageGroup
from transfusion.diffusion import CONTEXT_T
from transfusion.engine.cache import PAD_DOC, KVCache
from transfusion.engine.decoding import (CONDITIONAL, UNCONDITIONAL, choose_token, combine_guidance,
                                         guidance_branches)
from transfusion.samplers import sample


class Forward(Protocol):
    """The model, as the image makers use it: forward passes against a KV cache."""

    def run(self, cache: KVCache, tokens, positions, doc, image, groups=(), write: bool = True, mask=None):
        """Columns (B, L) appended to the cached rows (kept in the cache unless ``write`` is
        False) -> hidden (B, L, D) and one noise prediction per image group."""

    def mask(self, cache: KVCache, doc: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The mask (B, 1, L, S + L) ``run`` builds for columns (B, L) after the cache's S, to reuse."""

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden (..., D) -> logits (..., V + K): text vocabulary, then image codes."""

    def step_text(self, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor,
                  active: torch.Tensor) -> torch.Tensor:
        """One token (B,) per active row, positions (B,) advanced in place -> hidden (B, D)."""

    def after_boi(self, contexts: list[tuple[list, list]]) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
        """A new cache of rows holding each (segments, latents) context, then BOI -> (cache,
        next positions (B,), BOI's hidden (B, D))."""


@dataclass(frozen=True)
class MakerSettings:
    """What the makers know of the model, its tokenizer and the engine: plain values."""

    device: torch.device
    pad_id: int  # the tokenizer's padding token
    vocab_size: int  # the text vocabulary: image code c is token vocab_size + c
    max_seq_len: int  # the model's context
    num_patches: Callable[[tuple[int, int]], int]  # latent (h, w) -> the model's patches (checked)
    latent_shape: Callable[[tuple[int, int]], tuple[int, int, int]]  # image (H, W) pixels -> (C, h, w)
    edit_reference: bool = False  # image.edit_reference: the source image goes to the adapter
    cache_prefix: bool = True  # False: recompute every prefix at every denoising step (the reference)
    progress: object = False  # a progress bar over each image's denoising steps, or a callable (done, total)


def _image_block(s: MakerSettings, batch: int, n: int, rows: torch.Tensor, positions: torch.Tensor):
    """Inputs of an n-column block appended to every row of the cache, real only in ``rows``:
    tokens, positions, doc ids (padding elsewhere) and image ids, each (batch, n)."""
    device = s.device
    tokens = torch.full((batch, n), s.pad_id, dtype=torch.long, device=device)
    doc = torch.full((batch, n), PAD_DOC, dtype=torch.long, device=device)
    image = torch.full((batch, n), -1, dtype=torch.long, device=device)
    block_positions = torch.zeros(batch, n, dtype=torch.long, device=device)
    doc[rows] = 0
    block_positions[rows] = positions[rows, None] + torch.arange(n, device=device)
    return tokens, block_positions, doc, image


def _check_fits(s: MakerSettings, positions: torch.Tensor, n: int, what: str) -> None:
    if int(positions.max()) + n + 1 > s.max_seq_len:
        raise ValueError(f"an image of {n} {what} does not fit in the context (model.max_seq_len={s.max_seq_len})")


def _last_images(contexts, req, shape: tuple[int, int, int]) -> torch.Tensor:
    """Each row's last context image (G, C, h, w): what an edit or image-to-image request starts from."""
    last = [row.images_only()[1][-1:] for row in contexts]
    if not all(last) or any(tuple(x[0].shape) != shape for x in last):
        raise ValueError(f"an edit, or strength {req.strength} < 1, starts from the context's last image: every row "
                         f"needs one of the size asked for ({req.image_size[0]}x{req.image_size[1]} pixels)")
    return torch.stack([x[0] for x in last])


class DiffusionImages:
    """Continuous latents, denoised by a diffusion sampler (Transfusion; DDPM or flow: the model's
    prediction, noise or velocity, is guided and handed to the sampler alike)."""

    def __init__(self, forward: Forward, settings: MakerSettings, diffusion):
        self.forward, self.settings, self.diffusion = forward, settings, diffusion  # diffusion.noise_process

    def _prefix(self, branch: str, cache: KVCache, rows, positions, contexts) -> tuple[KVCache, torch.Tensor]:
        """Cache and next positions of one guidance branch's rows, each ending in BOI."""
        f = self.forward
        if branch == CONDITIONAL and self.settings.cache_prefix:
            return cache.rows(rows), positions[rows]
        if branch == CONDITIONAL:  # the reference: every prefix recomputed from its segments
            return f.after_boi([row.context() for row in contexts])[:2]
        if branch == UNCONDITIONAL:
            return f.after_boi([([], [])] * len(rows))[:2]
        return f.after_boi([row.images_only() for row in contexts])[:2]

    @torch.no_grad()
    def make(self, cache: KVCache, rows: torch.Tensor, positions: torch.Tensor, req, generators, contexts,
             boi_hidden: torch.Tensor) -> torch.Tensor:
        """Latents (G, C, h, w) of an image for each row in ``rows``; ``contexts[g]`` is what row
        ``rows[g]`` holds before its BOI (for the image-only branch and ``cache_prefix=False``)."""
        f, s = self.forward, self.settings
        C, h, w = s.latent_shape(req.image_size)
        n = s.num_patches((h, w))
        _check_fits(s, positions[rows], n, "patches")
        G = len(rows)
        has_images = any(row.images_only()[0] for row in contexts)
        branches = guidance_branches(req.guidance, req.image_guidance, has_images)
        referenced = req.edit and s.edit_reference
        source = _last_images(contexts, req, (C, h, w)) if referenced or req.strength < 1 else None
        reference = None
        if referenced:  # the source to the adapter, except in the unconditional branch
            reference = torch.cat([torch.zeros_like(source) if b == UNCONDITIONAL else source for b in branches])

        def inputs():
            """The n image columns of every branch row after its prefix, and their mask."""
            parts = [self._prefix(b, cache, rows, positions, contexts) for b in branches]
            prefix, pos = KVCache.concat([c for c, _ in parts]), torch.cat([p for _, p in parts])
            R, arange = len(pos), torch.arange(n, device=s.device)
            tokens = torch.full((R, n), s.pad_id, dtype=torch.long, device=s.device)
            doc = torch.zeros(R, n, dtype=torch.long, device=s.device)
            image = torch.full((R, n), int(prefix.image.max()) + 1, dtype=torch.long, device=s.device)
            index = torch.arange(R, device=s.device)[:, None] * n + arange  # (R, n) flat positions
            return prefix, (tokens, pos[:, None] + arange, doc, image), index, f.mask(prefix, doc, image)

        fixed = inputs() if s.cache_prefix else None  # built once: the prefix is fixed

        def predict_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            prefix, columns, index, mask = fixed or inputs()
            k = len(branches)
            group = ImageGroup(x.repeat(k, 1, 1, 1), t.repeat(k), index, reference)
            _, (eps,) = f.run(prefix, *columns, [group], write=False, mask=mask)
            return combine_guidance(dict(zip(branches, eps.split(G))), req.guidance, req.image_guidance)

        return sample(predict_noise, (G, C, h, w), self.diffusion, req.sampler, req.steps, generators,
                      clip=req.clip, device=s.device, progress=s.progress, init=source, strength=req.strength,
                      eta=req.eta)

    def write(self, cache: KVCache, rows: torch.Tensor, made: torch.Tensor, positions: torch.Tensor) -> None:
        """Finished latents (G, C, h, w) into the cache as clean context for ``rows``."""
        s = self.settings
        n = s.num_patches(tuple(made.shape[-2:]))
        tokens, block_positions, doc, image = _image_block(s, cache.doc.shape[0], n, rows, positions)
        image[rows] = int(cache.image.max()) + 1
        index = rows[:, None] * n + torch.arange(n, device=s.device)
        t = torch.full((len(rows),), CONTEXT_T, dtype=torch.long, device=s.device)
        self.forward.run(cache, tokens, block_positions, doc, image, [ImageGroup(made, t, index)])
        positions[rows] += n


class TokenImages:
    """VQ codes sampled as tokens after BOI, guided on the logits (the Chameleon baseline)."""

    def __init__(self, forward: Forward, settings: MakerSettings):
        self.forward, self.settings = forward, settings

    @torch.no_grad()
    def make(self, cache: KVCache, rows: torch.Tensor, positions: torch.Tensor, req, generators, contexts,
             boi_hidden: torch.Tensor) -> torch.Tensor:
        """VQ codes (G, h, w) for each row in ``rows`` (``boi_hidden`` (G, D): the hidden
        states after their BOI), sampled token by token."""
        f, s = self.forward, self.settings
        _, h, w = s.latent_shape(req.image_size)
        n, G, V = h * w, len(rows), s.vocab_size
        _check_fits(s, positions[rows], n, "tokens")
        branches = guidance_branches(req.guidance)
        parts = [(cache.rows(rows), positions[rows].clone(), boi_hidden)]
        if UNCONDITIONAL in branches:
            parts.append(f.after_boi([([], [])] * G))  # BOS BOI
        branch = KVCache.concat([c for c, _, _ in parts])
        pos, hidden = torch.cat([p for _, p, _ in parts]), torch.cat([x for _, _, x in parts])
        active = torch.ones(len(pos), dtype=torch.bool, device=s.device)
        codes = []
        for i in range(n):
            logits = f.logits(hidden).float()[:, V:]  # (R, K): image codes only
            logits = combine_guidance(dict(zip(branches, logits.split(G))), req.guidance)
            codes.append(choose_token(logits, generators, req.image_temperature, req.top_k, req.top_p))
            if i + 1 < n:
                hidden = f.step_text(branch, (codes[-1] + V).repeat(len(parts)), pos, active)
        return torch.stack(codes, 1).view(G, h, w)

    def write(self, cache: KVCache, rows: torch.Tensor, made: torch.Tensor, positions: torch.Tensor) -> None:
        """Finished codes (G, h, w) into the cache, as the tokens they are, for ``rows``."""
        s = self.settings
        n = made[0].numel()
        tokens, block_positions, doc, image = _image_block(s, cache.doc.shape[0], n, rows, positions)
        tokens[rows] = made.flatten(1) + s.vocab_size
        self.forward.run(cache, tokens, block_positions, doc, image)
        positions[rows] += n
