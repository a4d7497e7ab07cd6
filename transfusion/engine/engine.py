"""The generation loop: prefill, one forward step at a time, images made by the run's image maker."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from transfusion.autoencoders import Autoencoder
from transfusion.config import Config
from transfusion.data.document import Image, Text, Tokens
from transfusion.diffusion import noise_process
from transfusion.engine.cache import KVCache
from transfusion.engine.codec import build_codec
from transfusion.engine.decoding import choose_token, forbid
from transfusion.engine.forward import ModelForward
from transfusion.engine.images import DiffusionImages, MakerSettings, TokenImages
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
    """Batched generation for one model, its tokenizer, autoencoder and run config.

    Built once from them: the codec of the image objective (``codec.py``), the model's forward
    passes (``forward.ModelForward``) and the image maker, which sees only those passes and
    plain settings (``images.MakerSettings``).
    """

    def __init__(self, model: Transfusion, tokenizer: Tokenizer, autoencoder: Autoencoder, config: Config,
                 cache_prefix: bool = True, progress=False):
        self.model, self.tok, self.ae, self.config = model.eval(), tokenizer, autoencoder, config
        self.cache_prefix = cache_prefix  # False: recompute every prefix at every denoising step (the reference)
        self.progress = progress  # a progress bar over each image's denoising steps, or a callable (done, total)
        self.device = next(model.parameters()).device
        self.codec = build_codec(autoencoder, self.device, model.image_codes, model.vocab_size, tokenizer.boi_id,
                                 tokenizer.eoi_id)
        self.forward = ModelForward(self.model, tokenizer, self.codec, self.device)
        settings = MakerSettings(self.device, tokenizer.pad_id, model.vocab_size, model.model_cfg.max_seq_len,
                                 model.num_patches, self.codec.latent_shape, model.image_cfg.edit_reference,
                                 cache_prefix, progress)
        self.image_maker = (TokenImages(self.forward, settings) if model.image_codes
                            else DiffusionImages(self.forward, settings, noise_process(config.diffusion)))

    def run(self, cache: KVCache, tokens, positions, doc, image, groups=(), write: bool = True, mask=None):
        """Append columns (B, L) to the cached rows; returns hidden (B, L, D) and noise predictions."""
        return self.forward.run(cache, tokens, positions, doc, image, groups, write, mask)

    def encode(self, prompts: list[list]) -> list[list[torch.Tensor]]:
        """What the model reads of each prompt's images, in order (latents, or VQ codes (h, w))."""
        return self.codec.read(prompts)

    def prefill(self, prompts: list[list], latents: list[list[torch.Tensor]] | None = None):
        """Prompts, left-padded, into a new cache -> (cache, next positions (B,), last hidden (B, D))."""
        return self.forward.prefill(prompts, latents)

    def after_boi(self, contexts: list[tuple[list, list]]) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
        """Cache, next positions and BOI's hidden state (B, D) of rows holding each (segments,
        latents) context, then BOI."""
        return self.forward.after_boi(contexts)

    def step_text(self, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor, active: torch.Tensor):
        """Feed one token per active row (padding for the others): -> hidden (B, D)."""
        return self.forward.step_text(cache, tokens, positions, active)

    def next_text(self, hidden: torch.Tensor, req: Request, generators, too_short: torch.Tensor) -> torch.Tensor:
        """Next text token per row from hidden states (B, D); rows ``too_short`` (B,) cannot end."""
        logits = self.model.logits(hidden).float()[:, : self.model.vocab_size]  # (B, V): never an image code
        logits = forbid(logits, [self.tok.eos_id, self.tok.boi_id], too_short)
        return choose_token(logits, generators, req.temperature, req.top_k, req.top_p)

    @torch.no_grad()
    def generate(self, prompts: list[list], req: Request = Request(), force_image: bool = False,
                 seeds: list[int] | None = None) -> list[list]:
        """Continue each prompt with text and images; returns the generated Text / Image segments per row.

        A row stops at EOS, a stop string, ``max_new_tokens`` or when it asks for more than
        ``max_images`` images. ``force_image`` makes BOI the first generated token. Row b samples
        with seed ``seeds[b]`` (default ``req.seed + b``), as it would alone with that seed.
        """
        seeds = [req.seed + b for b in range(len(prompts))] if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise ValueError(f"one seed per prompt: {len(seeds)} seeds for {len(prompts)} prompts")
        req = req.resolve(self.config, self.ae)
        self.model.num_patches(self.codec.latent_shape(req.image_size)[1:])  # a size the model cannot take fails first
        latents = self.encode(prompts)
        rows = [Row(list(p), list(lat)) for p, lat in zip(prompts, latents)]
        cache, positions, last = self.prefill(prompts, latents)
        B, tok = len(prompts), self.tok
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
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
                pixels = self.codec.to_pixels(made).cpu()
                self.image_maker.write(cache, idx, made, positions)
                for r, encoded, img in zip(idx.tolist(), made, pixels):
                    rows[r].add_image(Image(img), encoded)
                nxt = torch.where(wants_image, torch.full_like(nxt, tok.eoi_id), nxt)
            fed = nxt
        for row in rows:
            row.close_text(tok)
        return [row.generated for row in rows]
