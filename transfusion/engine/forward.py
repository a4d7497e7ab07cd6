"""The model's forward passes against a KV cache: the ``images.Forward`` operations, and prefill.

``ModelForward`` is all the image makers see of a model: they run columns against a cache,
ask for its mask and logits, feed single tokens and prefill contexts that end in BOI, never
holding the Engine that built them.
"""

from __future__ import annotations

import torch

from transfusion.data.packing import layout, pack
from transfusion.engine.cache import PAD_DOC, KVCache
from transfusion.engine.codec import Codec
from transfusion.model.transfusion import Transfusion
from transfusion.tokenizer import Tokenizer


class ModelForward:
    """Forward passes of one model (in eval mode) for a generation batch; prompt images are read
    through ``codec``."""

    def __init__(self, model: Transfusion, tokenizer: Tokenizer, codec: Codec, device: torch.device):
        self.model, self.tok, self.codec, self.device = model, tokenizer, codec, device

    def mask(self, cache: KVCache, doc: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Dense mask (B, 1, L, S + L) of columns with doc and image ids (B, L) appended to the
        cache's S columns."""
        return self.model.mask(doc, image, cache.doc, cache.image)

    def run(self, cache: KVCache, tokens, positions, doc, image, groups=(), write: bool = True, mask=None):
        """Append columns (B, L) to the cached rows; returns hidden (B, L, D) and noise predictions
        (one per image group). ``write=False`` leaves the cache as it was; ``mask`` (from
        ``mask``) saves rebuilding it."""
        if mask is None:
            mask = self.mask(cache, doc, image)  # (B, 1, L, S + L)
        present: list = []
        hidden, noise = self.model(tokens, positions, doc, image, list(groups), mask=mask, past=cache.kv,
                                   present=present)
        if write:
            cache.append(present, doc, image)
        return hidden, noise

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden (..., D) -> logits (..., V + K): the text vocabulary, then the image codes."""
        return self.model.logits(hidden)

    @torch.no_grad()
    def prefill(self, prompts: list[list], latents: list[list[torch.Tensor]] | None = None):
        """Prompts (lists of Text / Tokens / Image segments, images clean), left-padded, into a new cache.

        ``latents``: what the model reads of each prompt's images (``Codec.read``; read here when
        None). Returns the cache, each row's next position (B,) and the last column's hidden (B, D).
        """
        latents = self.codec.read(prompts) if latents is None else latents
        prompts, latents = zip(*[self.codec.as_prompt(p, lat) for p, lat in zip(prompts, latents)])
        lays = [layout(p, lat, [0] * len(lat), self.tok, self.model.num_patches, close=False)
                for p, lat in zip(prompts, latents)]
        longest, limit = max(len(lay.ids) for lay in lays), self.model.model_cfg.max_seq_len
        if longest > limit:
            raise ValueError(f"the prompt needs {longest} tokens but the model's context is model.max_seq_len={limit}")
        batch, _ = pack(lays, len(lays), longest, self.tok.pad_id, one_per_row=True, align_end=True)
        batch = batch.to(self.device)
        doc = torch.where(batch.doc_ids >= 0, 0, PAD_DOC)
        cache = KVCache()
        hidden, _ = self.run(cache, batch.tokens, batch.positions, doc, batch.image_ids, batch.clean_image_groups())
        return cache, (doc >= 0).sum(1), hidden[:, -1]

    def after_boi(self, contexts: list[tuple[list, list]]) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
        """Cache, next positions (B,) and BOI's hidden state (B, D) of rows holding each
        (segments, latents) context, then BOI."""
        cache, positions, _ = self.prefill([c[0] for c in contexts], [c[1] for c in contexts])
        boi = torch.full((len(contexts),), self.tok.boi_id, device=self.device)
        hidden = self.step_text(cache, boi, positions, torch.ones_like(boi, dtype=torch.bool))
        return cache, positions, hidden

    def step_text(self, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor, active: torch.Tensor):
        """Feed one token (B,) per active row (padding for the others), advancing the active
        rows' ``positions`` (B,) in place: -> hidden (B, D)."""
        column = lambda x, fill: torch.where(active, x, fill)[:, None]  # noqa: E731
        doc = column(torch.zeros_like(tokens), PAD_DOC)
        hidden, _ = self.run(cache, column(tokens, self.tok.pad_id), column(positions, 0), doc,
                             torch.full_like(doc, -1))
        positions += active.long()
        return hidden[:, 0]
