"""The generation loop: prefill, one forward step at a time, images made by the run's image maker."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from transfusion.autoencoders import Autoencoder
from transfusion.config import Config
from transfusion.data.document import Image, Text, Tokens
from transfusion.data.packing import layout, pack
from transfusion.engine.cache import PAD_DOC, KVCache
from transfusion.engine.decoding import choose_token, forbid
from transfusion.engine.images import DiffusionImages, TokenImages
from transfusion.engine.settings import Request
from transfusion.model.transfusion import Transfusion
from transfusion.tokenizer import Tokenizer


@dataclass
class Row:
    """What one row has seen: its prompt and everything generated after it."""

    segments: list  # Text / Tokens / Image, in order (generated text as the exact Tokens sampled)
    latents: list[torch.Tensor]  # one per Image segment, as the model saw it
    generated: list = field(default_factory=list)  # the output: Text / Image
    pending: list[int] = field(default_factory=list)  # text ids since the last image
    images_made: int = 0

    def close_text(self, tok: Tokenizer) -> None:
        if self.pending:
            self.segments.append(Tokens(tuple(self.pending)))
            self.generated.append(Text(tok.decode(self.pending)))
            self.pending = []

    def add_image(self, image: Image, latent: torch.Tensor) -> None:
        self.segments.append(image)
        self.latents.append(latent)
        self.generated.append(image)
        self.images_made += 1

    def images_only(self) -> tuple[list, list[torch.Tensor]]:
        return [s for s in self.segments if isinstance(s, Image)], self.latents

    def context(self) -> tuple[list, list[torch.Tensor]]:
        pending = [Tokens(tuple(self.pending))] if self.pending else []
        return self.segments + pending, self.latents


class Engine:
    """Batched generation for one model, its tokenizer, autoencoder and run config."""

    def __init__(self, model: Transfusion, tokenizer: Tokenizer, autoencoder: Autoencoder, config: Config,
                 cache_prefix: bool = True, progress=False):
        self.model, self.tok, self.ae, self.config = model.eval(), tokenizer, autoencoder, config
        self.cache_prefix = cache_prefix  # False: recompute every prefix at every denoising step (the reference)
        self.progress = progress  # a progress bar over each image's denoising steps, or a callable (done, total)
        self.device = next(model.parameters()).device
        self.image_maker = TokenImages(self) if model.image_codes else DiffusionImages(self)

    def run(self, cache: KVCache, tokens, positions, doc, image, groups=(), write: bool = True, mask=None):
        """Append columns (B, L) to the cached rows; returns hidden (B, L, D) and noise predictions."""
        if mask is None:
            mask = self.model.mask(doc, image, cache.doc, cache.image)  # (B, 1, L, S + L)
        present: list = []
        hidden, noise = self.model(tokens, positions, doc, image, list(groups), mask=mask, past=cache.kv,
                                   present=present)
        if write:
            cache.append(present, doc, image)
        return hidden, noise

    def encode(self, prompts: list[list]) -> list[list[torch.Tensor]]:
        """What the model reads of each prompt's images, in order (latents, or VQ codes (h, w))."""
        return [[self.image_maker.encode(s.pixels[None].to(self.device)) for s in p if isinstance(s, Image)]
                for p in prompts]

    @torch.no_grad()
    def prefill(self, prompts: list[list], latents: list[list[torch.Tensor]] | None = None):
        """Prompts (lists of Text / Tokens / Image segments, images clean), left-padded, into a new cache.

        Returns the cache, each row's next position (B,) and the last column's hidden (B, D).
        """
        latents = self.encode(prompts) if latents is None else latents
        prompts, latents = zip(*[self.image_maker.as_prompt(p, lat) for p, lat in zip(prompts, latents)])
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
        """Cache, next positions and BOI's hidden state (B, D) of rows holding each (segments,
        latents) context, then BOI."""
        cache, positions, _ = self.prefill([c[0] for c in contexts], [c[1] for c in contexts])
        boi = torch.full((len(contexts),), self.tok.boi_id, device=self.device)
        hidden = self.step_text(cache, boi, positions, torch.ones_like(boi, dtype=torch.bool))
        return cache, positions, hidden

    def step_text(self, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor, active: torch.Tensor):
        """Feed one token per active row (padding for the others): -> hidden (B, D)."""
        column = lambda x, fill: torch.where(active, x, fill)[:, None]  # noqa: E731
        doc = column(torch.zeros_like(tokens), PAD_DOC)
        hidden, _ = self.run(cache, column(tokens, self.tok.pad_id), column(positions, 0), doc,
                             torch.full_like(doc, -1))
        positions += active.long()
        return hidden[:, 0]

    def next_text(self, hidden: torch.Tensor, req: Request, generators, too_short: torch.Tensor) -> torch.Tensor:
        """Next text token per row from hidden states (B, D); rows ``too_short`` (B,) cannot end."""
        logits = self.model.logits(hidden).float()[:, : self.model.vocab_size]  # (B, V): never an image code
        logits = forbid(logits, [self.tok.eos_id, self.tok.boi_id], too_short)
        return choose_token(logits, generators, req.temperature, req.top_k, req.top_p)

    @torch.no_grad()
    def generate(self, prompts: list[list], req: Request = Request(), force_image: bool = False) -> list[list]:
        """Continue each prompt with text and images; returns the generated Text / Image segments per row.

        A row stops at EOS, a stop string, ``max_new_tokens`` or when it asks for more than
        ``max_images`` images. ``force_image`` makes BOI the first generated token.
        """
        req = req.resolve(self.config, self.ae)
        self.model.num_patches(self.ae.latent_shape(*req.image_size)[1:])  # a size the model cannot take fails first
        latents = self.encode(prompts)
        rows = [Row(list(p), list(lat)) for p, lat in zip(prompts, latents)]
        cache, positions, last = self.prefill(prompts, latents)
        B, tok = len(prompts), self.tok
        generators = [torch.Generator().manual_seed(req.seed + b) for b in range(B)]
        produced = torch.zeros(B, dtype=torch.long, device=self.device)  # text tokens generated per row
        fed = self.next_text(last, req, generators, produced < req.min_new_tokens)
        if force_image:
            fed = torch.full_like(fed, tok.boi_id)
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        for _ in range(req.max_new_tokens):
            for b, row in enumerate(rows):  # stop before feeding what ends a row
                token = int(fed[b])
                if done[b]:
                    continue
                if token == tok.eos_id or (token == tok.boi_id and row.images_made >= req.max_images):
                    done[b] = True
                elif token not in tok.special_ids:
                    row.pending.append(token)
                    produced[b] += 1
                    done[b] = any(s in tok.decode(row.pending) for s in req.stop)
            if bool(done.all()):
                break
            hidden = self.step_text(cache, fed, positions, ~done)
            wants_image = ~done & (fed == tok.boi_id)
            nxt = self.next_text(hidden, req, generators, produced < req.min_new_tokens)
            if bool(wants_image.any()):
                idx = wants_image.nonzero()[:, 0]
                for r in idx.tolist():
                    rows[r].close_text(tok)
                made = self.image_maker.make(cache, idx, positions, req, [generators[r] for r in idx.tolist()],
                                        [rows[r] for r in idx.tolist()], hidden[idx])
                pixels = self.image_maker.to_pixels(made).cpu()
                self.image_maker.write(cache, idx, made, positions)
                for r, encoded, img in zip(idx.tolist(), made, pixels):
                    rows[r].add_image(Image(img), encoded)
                nxt = torch.where(wants_image, torch.full_like(nxt, tok.eoi_id), nxt)
            fed = nxt
        for row in rows:
            row.close_text(tok)
        return [row.generated for row in rows]
