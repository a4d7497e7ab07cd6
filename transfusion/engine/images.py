"""Image makers: one per image objective, behind one small interface.

An image maker turns prompt images into what the model reads, makes a new image for rows
whose last input was BOI, and writes a finished image into the cache as context:

    encode(pixels (1, C, H, W)) -> latent (C, h, w) or codes (h, w)
    as_prompt(segments, encoded) -> (segments, latents) for ``packing.layout``
    make(cache, rows, positions, req, generators, contexts, boi_hidden) -> latents or codes (G, ...)
    to_pixels(made) -> (G, C, H, W) in [-1, 1]
    write(cache, rows, made, positions)

``DiffusionImages`` (Transfusion) denoises all n patches at once against the cached prefix;
``TokenImages`` (the Chameleon baseline) samples VQ codes one token at a time. Both guide
with the branches of ``decoding.guidance_branches``, run as extra rows of one batch.
"""

from __future__ import annotations

import torch

from transfusion.batch import ImageGroup
from transfusion.data.document import Image, Tokens
from transfusion.diffusion import CONTEXT_T, noise_process
from transfusion.engine.cache import PAD_DOC, KVCache
from transfusion.engine.decoding import (CONDITIONAL, UNCONDITIONAL, choose_token, combine_guidance,
                                         guidance_branches)
from transfusion.samplers import sample


def _image_block(engine, batch: int, n: int, rows: torch.Tensor, positions: torch.Tensor):
    """Inputs of an n-column block appended to every row of the cache, real only in ``rows``:
    tokens, positions, doc ids (padding elsewhere) and image ids, each (batch, n)."""
    device = engine.device
    tokens = torch.full((batch, n), engine.tok.pad_id, dtype=torch.long, device=device)
    doc = torch.full((batch, n), PAD_DOC, dtype=torch.long, device=device)
    image = torch.full((batch, n), -1, dtype=torch.long, device=device)
    block_positions = torch.zeros(batch, n, dtype=torch.long, device=device)
    doc[rows] = 0
    block_positions[rows] = positions[rows, None] + torch.arange(n, device=device)
    return tokens, block_positions, doc, image


def _check_fits(engine, positions: torch.Tensor, n: int, what: str) -> None:
    limit = engine.model.model_cfg.max_seq_len
    if int(positions.max()) + n + 1 > limit:
        raise ValueError(f"an image of {n} {what} does not fit in the context (model.max_seq_len={limit})")


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

    def __init__(self, engine):
        self.engine = engine
        self.diffusion = noise_process(engine.config.diffusion)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.engine.ae.encode(pixels)[0]

    def as_prompt(self, segments: list, encoded: list[torch.Tensor]) -> tuple[list, list[torch.Tensor]]:
        return segments, encoded

    def _prefix(self, branch: str, cache: KVCache, rows, positions, contexts) -> tuple[KVCache, torch.Tensor]:
        """Cache and next positions of one guidance branch's rows, each ending in BOI."""
        e = self.engine
        if branch == CONDITIONAL and e.cache_prefix:
            return cache.rows(rows), positions[rows]
        if branch == CONDITIONAL:  # the reference: every prefix recomputed from its segments
            return e.after_boi([row.context() for row in contexts])[:2]
        if branch == UNCONDITIONAL:
            return e.after_boi([([], [])] * len(rows))[:2]
        return e.after_boi([row.images_only() for row in contexts])[:2]

    @torch.no_grad()
    def make(self, cache: KVCache, rows: torch.Tensor, positions: torch.Tensor, req, generators, contexts,
             boi_hidden: torch.Tensor) -> torch.Tensor:
        """Latents (G, C, h, w) of an image for each row in ``rows``; ``contexts[g]`` is what row
        ``rows[g]`` holds before its BOI (for the image-only branch and ``cache_prefix=False``)."""
        e = self.engine
        C, h, w = e.ae.latent_shape(*req.image_size)
        n = e.model.num_patches((h, w))
        _check_fits(e, positions[rows], n, "patches")
        G = len(rows)
        has_images = any(row.images_only()[0] for row in contexts)
        branches = guidance_branches(req.guidance, req.image_guidance, has_images)
        referenced = req.edit and e.model.image_cfg.edit_reference
        source = _last_images(contexts, req, (C, h, w)) if referenced or req.strength < 1 else None
        reference = None
        if referenced:  # the source to the adapter, except in the unconditional branch
            reference = torch.cat([torch.zeros_like(source) if b == UNCONDITIONAL else source for b in branches])

        def inputs():
            """The n image columns of every branch row after its prefix, and their mask."""
            parts = [self._prefix(b, cache, rows, positions, contexts) for b in branches]
            prefix, pos = KVCache.concat([c for c, _ in parts]), torch.cat([p for _, p in parts])
            R, arange = len(pos), torch.arange(n, device=e.device)
            tokens = torch.full((R, n), e.tok.pad_id, dtype=torch.long, device=e.device)
            doc = torch.zeros(R, n, dtype=torch.long, device=e.device)
            image = torch.full((R, n), int(prefix.image.max()) + 1, dtype=torch.long, device=e.device)
            index = torch.arange(R, device=e.device)[:, None] * n + arange  # (R, n) flat positions
            return prefix, (tokens, pos[:, None] + arange, doc, image), index, e.model.mask(doc, image, prefix.doc,
                                                                                             prefix.image)

        fixed = inputs() if e.cache_prefix else None  # built once: the prefix is fixed

        def predict_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            prefix, columns, index, mask = fixed or inputs()
            k = len(branches)
            group = ImageGroup(x.repeat(k, 1, 1, 1), t.repeat(k), index, reference)
            _, (eps,) = e.run(prefix, *columns, [group], write=False, mask=mask)
            return combine_guidance(dict(zip(branches, eps.split(G))), req.guidance, req.image_guidance)

        return sample(predict_noise, (G, C, h, w), self.diffusion, req.sampler, req.steps, generators,
                      clip=req.clip, device=e.device, progress=e.progress, init=source, strength=req.strength,
                      eta=req.eta)

    def to_pixels(self, made: torch.Tensor) -> torch.Tensor:
        return self.engine.ae.decode(made).clamp(-1, 1)

    def write(self, cache: KVCache, rows: torch.Tensor, made: torch.Tensor, positions: torch.Tensor) -> None:
        """Finished latents (G, C, h, w) into the cache as clean context for ``rows``."""
        e = self.engine
        n = e.model.num_patches(tuple(made.shape[-2:]))
        tokens, block_positions, doc, image = _image_block(e, cache.doc.shape[0], n, rows, positions)
        image[rows] = int(cache.image.max()) + 1
        index = rows[:, None] * n + torch.arange(n, device=e.device)
        t = torch.full((len(rows),), CONTEXT_T, dtype=torch.long, device=e.device)
        e.run(cache, tokens, block_positions, doc, image, [ImageGroup(made, t, index)])
        positions[rows] += n


class TokenImages:
    """VQ codes sampled as tokens after BOI, guided on the logits (the Chameleon baseline)."""

    def __init__(self, engine):
        self.engine = engine

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.engine.ae.tokenize(pixels)[0]

    def as_prompt(self, segments: list, encoded: list[torch.Tensor]) -> tuple[list, list[torch.Tensor]]:
        """Segments with every Image replaced by the Tokens ``BOI codes EOI``; no latents."""
        codes, V, tok = iter(encoded), self.engine.model.vocab_size, self.engine.tok
        return [Tokens((tok.boi_id, *(next(codes).flatten() + V).tolist(), tok.eoi_id))
                if isinstance(s, Image) else s for s in segments], []

    @torch.no_grad()
    def make(self, cache: KVCache, rows: torch.Tensor, positions: torch.Tensor, req, generators, contexts,
             boi_hidden: torch.Tensor) -> torch.Tensor:
        """VQ codes (G, h, w) for each row in ``rows`` (``boi_hidden`` (G, D): the hidden
        states after their BOI), sampled token by token."""
        e = self.engine
        _, h, w = e.ae.latent_shape(*req.image_size)
        n, G, V = h * w, len(rows), e.model.vocab_size
        _check_fits(e, positions[rows], n, "tokens")
        branches = guidance_branches(req.guidance)
        parts = [(cache.rows(rows), positions[rows].clone(), boi_hidden)]
        if UNCONDITIONAL in branches:
            parts.append(e.after_boi([([], [])] * G))  # BOS BOI
        branch = KVCache.concat([c for c, _, _ in parts])
        pos, hidden = torch.cat([p for _, p, _ in parts]), torch.cat([x for _, _, x in parts])
        active = torch.ones(len(pos), dtype=torch.bool, device=e.device)
        codes = []
        for i in range(n):
            logits = e.model.logits(hidden).float()[:, V:]  # (R, K): image codes only
            logits = combine_guidance(dict(zip(branches, logits.split(G))), req.guidance)
            codes.append(choose_token(logits, generators, req.image_temperature, req.top_k, req.top_p))
            if i + 1 < n:
                hidden = e.step_text(branch, (codes[-1] + V).repeat(len(parts)), pos, active)
        return torch.stack(codes, 1).view(G, h, w)

    def to_pixels(self, made: torch.Tensor) -> torch.Tensor:
        return self.engine.ae.detokenize(made)

    def write(self, cache: KVCache, rows: torch.Tensor, made: torch.Tensor, positions: torch.Tensor) -> None:
        """Finished codes (G, h, w) into the cache, as the tokens they are, for ``rows``."""
        e = self.engine
        n = made[0].numel()
        tokens, block_positions, doc, image = _image_block(e, cache.doc.shape[0], n, rows, positions)
        tokens[rows] = made.flatten(1) + e.model.vocab_size
        e.run(cache, tokens, block_positions, doc, image)
        positions[rows] += n
