"""Generation with a KV cache: text token by token, images by diffusion, interleaved.

Every row of a batch is one document. Prompts are left-padded so that all rows end at the
same cache column; each call then appends the same number of columns to every row, and a
row with nothing to add that call gets padding columns, which no real position attends to.

- LM mode: one column per step; each row's sampled token is its next input.
- Diffusion mode (a row fed BOI): the prefix never sees the image, so its keys and values
  stay in the cache while each denoising step runs only the n image positions against it.
  Classifier-free guidance runs its branches as extra rows of the same batch:

      conditional  c: the row's whole context, then BOI
      unconditional u: BOS BOI (a dropped caption, as in training)
      image-only   i: the context's images without its text, then BOI

  eps = u + s (c - u) with one scale s; with separate text and image scales (editing-style
  prompts that hold images) eps = u + s_img (i - u) + s_txt (c - i). The finished image
  is written into the cache once, clean (t = 0), and the row continues with EOI.
- Image tokens (``image.objective=tokens``, the Chameleon baseline): after BOI the row samples
  the image's VQ codes one token at a time from the code logits, with classifier-free
  guidance on the logits (l = u + s (c - u)) from an unconditional row run alongside;
  outside images only text tokens are sampled.
- ``Engine(cache_prefix=False)`` recomputes every prefix at every denoising step instead:
  the reference the cache is tested and benchmarked against.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from transfusion.autoencoder import Autoencoder
from transfusion.config import Config
from transfusion.data.document import Image, Text, Tokens
from transfusion.data.packing import layout, pack
from transfusion.diffusion import Diffusion
from transfusion.samplers import DEFAULT_STEPS, check_sampler, sample
from transfusion.model.transfusion import ImageGroup, Transfusion
from transfusion.tokenizer import Tokenizer

PAD_DOC = -1  # doc id of padding columns: real positions (doc 0) never attend to them


@dataclass
class KVCache:
    """Per layer (k, v) of shape (B, H, S, hd), and each column's doc and image id (B, S)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    doc: torch.Tensor | None = None
    image: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.doc is None else self.doc.shape[1]

    def append(self, present: list, doc: torch.Tensor, image: torch.Tensor) -> None:
        if self.kv is None:
            self.kv, self.doc, self.image = list(present), doc, image
            return
        self.kv = [(torch.cat([k0, k1], 2), torch.cat([v0, v1], 2)) for (k0, v0), (k1, v1) in zip(self.kv, present)]
        self.doc, self.image = torch.cat([self.doc, doc], 1), torch.cat([self.image, image], 1)

    def rows(self, index: torch.Tensor) -> "KVCache":
        return KVCache([(k[index], v[index]) for k, v in self.kv], self.doc[index], self.image[index])

    def left_pad(self, length: int) -> "KVCache":
        """The same rows with padding columns in front, ``length`` columns in all."""
        extra = length - self.length
        if extra <= 0:
            return self
        B = self.doc.shape[0]
        pad_cols = self.doc.new_full((B, extra), PAD_DOC)
        kv = [(torch.cat([k.new_zeros(*k.shape[:2], extra, k.shape[3]), k], 2),
               torch.cat([v.new_zeros(*v.shape[:2], extra, v.shape[3]), v], 2)) for k, v in self.kv]
        return KVCache(kv, torch.cat([pad_cols, self.doc], 1), torch.cat([pad_cols, self.image], 1))

    @staticmethod
    def concat(caches: list["KVCache"]) -> "KVCache":
        """Rows of several caches with equal lengths, stacked."""
        kv = [(torch.cat([c.kv[i][0] for c in caches]), torch.cat([c.kv[i][1] for c in caches]))
              for i in range(len(caches[0].kv))]
        return KVCache(kv, torch.cat([c.doc for c in caches]), torch.cat([c.image for c in caches]))


@dataclass
class Request:
    """Sampling settings for one ``generate`` call; ``None`` means the model's configured default."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0  # text tokens before EOS or BOI may end the text (captions that say something)
    max_images: int = 1
    temperature: float = 0.0  # 0: greedy (the paper's default)
    top_k: int = 0
    top_p: float = 1.0
    image_size: int | tuple[int, int] | None = None  # pixels, side or (H, W); default: image.size
    sampler: str | None = None  # ddpm | ddim | dpm++; default: diffusion.sampler
    steps: int | None = None  # default: diffusion.sample_steps for that sampler, else DEFAULT_STEPS
    guidance: float | None = None  # CFG scale on the whole context (text scale when image_guidance is set)
    image_guidance: float | None = None  # separate scale for images in the context; None: one scale
    stop: list[str] = field(default_factory=list)  # stop strings in the generated text
    image_temperature: float = 1.0  # sampling of image tokens (image.objective=tokens only)
    seed: int = 0  # row b of a batch samples with seed + b, as it would alone with that seed

    def resolve(self, cfg: Config) -> "Request":
        """A copy with every default filled in from ``cfg`` and every setting checked."""
        d = cfg.diffusion
        sampler = self.sampler or d.sampler
        steps = self.steps
        if steps is None:
            steps = d.sample_steps if sampler == d.sampler else DEFAULT_STEPS.get(sampler)
        check_sampler(sampler, steps, d.timesteps)
        if self.temperature < 0 or self.image_temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"temperature and image_temperature must be >= 0, top_p in (0, 1] and top_k >= 0; got "
                             f"{self.temperature}, {self.image_temperature}, {self.top_p}, {self.top_k}")
        if self.max_new_tokens < 1 or self.max_images < 0 or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("max_new_tokens must be >= 1, min_new_tokens in [0, max_new_tokens] and max_images >= 0")
        size = self.image_size or cfg.image.size
        return dataclasses.replace(
            self, sampler=sampler, steps=steps, image_size=(size, size) if isinstance(size, int) else tuple(size),
            guidance=d.guidance if self.guidance is None else self.guidance)

    def settings(self) -> dict:
        """Every setting, for the JSON written next to an output."""
        return dataclasses.asdict(self)


@dataclass
class Row:
    """What one row has seen: its prompt and everything generated after it."""

    segments: list  # Text / Tokens / Image, in order (generated text as the exact Tokens sampled)
    latents: list[torch.Tensor]  # one per Image segment, as the model saw it
    generated: list = field(default_factory=list)  # the output: Text / Image
    pending: list[int] = field(default_factory=list)  # text ids since the last image
    images: int = 0

    def close_text(self, tok: Tokenizer) -> None:
        if self.pending:
            self.segments.append(Tokens(tuple(self.pending)))
            self.generated.append(Text(tok.decode(self.pending)))
            self.pending = []

    def add_image(self, image: Image, latent: torch.Tensor) -> None:
        self.segments.append(image)
        self.latents.append(latent)
        self.generated.append(image)
        self.images += 1

    def images_only(self) -> tuple[list, list[torch.Tensor]]:
        return [s for s in self.segments if isinstance(s, Image)], self.latents

    def context(self) -> tuple[list, list[torch.Tensor]]:
        pending = [Tokens(tuple(self.pending))] if self.pending else []
        return self.segments + pending, self.latents


class Engine:
    def __init__(self, model: Transfusion, tokenizer: Tokenizer, autoencoder: Autoencoder,
                 cache_prefix: bool = True, progress: bool = False):
        self.model = model.eval()
        self.tok = tokenizer
        self.ae = autoencoder
        self.cache_prefix = cache_prefix
        self.progress = progress  # a progress bar over each image's denoising steps
        self.device = next(model.parameters()).device
        self.codes = model.image_codes  # > 0: images are VQ codes sampled as tokens
        self.diffusion = Diffusion(model.cfg.diffusion.timesteps, model.cfg.diffusion.schedule)

    # ---------------------------------------------------------------- the one forward call
    def run(self, cache: KVCache, tokens, positions, doc, image, groups=(), write: bool = True, mask=None):
        """Append columns (B, L) to the cached rows; returns hidden (B, L, D) and noise predictions."""
        if mask is None:
            mask = self.model.mask(doc, image, cache.doc, cache.image)  # (B, 1, L, S + L)
        present: list = []
        hidden, noise = self.model(tokens, positions, doc, image, list(groups), mask=mask,
                                   past=cache.kv, present=present)
        if write:
            cache.append(present, doc, image)
        return hidden, noise

    # ---------------------------------------------------------------- prompts
    def encode(self, prompts: list[list]) -> list[list[torch.Tensor]]:
        """Latents (or, for image tokens, VQ codes (h, w)) of each prompt's images, in order."""
        encode = self.ae.tokenize if self.codes else self.ae.encode
        return [[encode(s.pixels[None].to(self.device))[0] for s in p if isinstance(s, Image)] for p in prompts]

    def as_tokens(self, segments: list, codes: list[torch.Tensor]) -> list:
        """Segments with every Image replaced by the Tokens ``BOI codes EOI`` (image tokens)."""
        codes, V = iter(codes), self.model.vocab_size
        return [Tokens((self.tok.boi_id, *(next(codes).flatten() + V).tolist(), self.tok.eoi_id))
                if isinstance(s, Image) else s for s in segments]

    @torch.no_grad()
    def prefill(self, prompts: list[list], latents: list[list[torch.Tensor]] | None = None):
        """Prompts (lists of Text / Tokens / Image segments, images clean), left-padded, into a new cache.

        Returns the cache, each row's next position (B,) and the last column's hidden (B, D).
        """
        latents = self.encode(prompts) if latents is None else latents
        if self.codes:
            prompts, latents = [self.as_tokens(p, c) for p, c in zip(prompts, latents)], [[] for _ in prompts]
        lays = [layout(p, lat, [0] * len(lat), self.tok, self.model.num_patches, close=False)
                for p, lat in zip(prompts, latents)]
        longest = max(len(lay.ids) for lay in lays)
        limit = self.model.cfg.model.max_seq_len
        if longest > limit:
            raise ValueError(f"the prompt needs {longest} tokens but the model's context is model.max_seq_len={limit}")
        batch, _ = pack(lays, len(lays), longest, self.tok.pad_id, one_per_row=True, align_end=True)
        batch = batch.to(self.device)
        doc = torch.where(batch.doc_ids >= 0, 0, PAD_DOC)
        cache = KVCache()
        hidden, _ = self.run(cache, batch.tokens, batch.positions, doc, batch.image_ids, batch.clean_image_groups())
        return cache, (doc >= 0).sum(1), hidden[:, -1]

    def _after_boi(self, contexts: list[tuple[list, list]]) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
        """Cache, next positions and BOI's hidden state (B, D) of rows holding each (segments,
        latents) context, then BOI."""
        cache, positions, _ = self.prefill([c[0] for c in contexts], [c[1] for c in contexts])
        active = torch.ones(len(contexts), dtype=torch.bool, device=self.device)
        hidden = self.step_text(cache, torch.full((len(contexts),), self.tok.boi_id, device=self.device), positions,
                                active)
        return cache, positions, hidden

    # ---------------------------------------------------------------- LM mode
    def sample_token(self, hidden: torch.Tensor, req: Request, generators: list[torch.Generator],
                     no_end: torch.Tensor | None = None) -> torch.Tensor:
        """Next text token per row from hidden states (B, D): greedy, or temperature / top-k /
        top-p with row b drawing from ``generators[b]``; rows where ``no_end`` (B,) is set
        cannot pick EOS or BOI."""
        logits = self.model.logits(hidden).float()[:, : self.model.vocab_size]  # (B, V): never an image code
        if no_end is not None:
            ends = torch.tensor([self.tok.eos_id, self.tok.boi_id], device=logits.device)
            logits[:, ends] = logits[:, ends].masked_fill(no_end[:, None].to(logits.device), float("-inf"))
        return self.pick(logits, req.temperature, req, generators)

    def pick(self, logits: torch.Tensor, temperature: float, req: Request, generators: list[torch.Generator]):
        """Index per row of logits (B, V): argmax at temperature 0, else sampled with top-k / top-p."""
        if temperature <= 0:
            return logits.argmax(-1)
        logits = logits / temperature
        if req.top_k > 0:
            kth = logits.topk(min(req.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if req.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            beyond = probs.cumsum(-1) - probs > req.top_p  # tokens after the nucleus is full
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(beyond, float("-inf")))
        probs = logits.softmax(-1).cpu()
        picks = [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)]
        return torch.cat(picks).to(self.device)

    def step_text(self, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor, active: torch.Tensor):
        """Feed one token per active row (padding for the others): -> hidden (B, D)."""
        column = lambda x, fill: torch.where(active, x, fill)[:, None]  # noqa: E731
        doc = column(torch.zeros_like(tokens), PAD_DOC)
        hidden, _ = self.run(cache, column(tokens, self.tok.pad_id), column(positions, 0), doc,
                             torch.full_like(doc, -1))
        positions += active.long()
        return hidden[:, 0]

    # ---------------------------------------------------------------- diffusion mode
    @torch.no_grad()
    def denoise(self, cache: KVCache, rows: torch.Tensor, positions: torch.Tensor, req: Request,
                generators: list[torch.Generator], contexts: list[Row]) -> torch.Tensor:
        """Latents (G, C, h, w) of an image for each row in ``rows`` (their last input was BOI).

        ``req`` is resolved (``Request.resolve``); ``contexts[g]`` is what row ``rows[g]`` holds
        before that BOI (used by the image-only branch and by ``cache_prefix=False``).
        """
        C, h, w = self.ae.latent_shape(*req.image_size)
        n = self.model.num_patches((h, w))
        limit = self.model.cfg.model.max_seq_len
        if int(positions[rows].max()) + n + 1 > limit:
            raise ValueError(f"an image of {n} patches does not fit in the context (model.max_seq_len={limit})")
        G = len(rows)
        s_txt, s_img = req.guidance, req.image_guidance
        has_images = any(row.images_only()[0] for row in contexts)
        three = s_img is not None and s_img != s_txt and has_images
        two = not three and s_txt != 1.0

        def branches() -> tuple[KVCache, torch.Tensor]:
            if self.cache_prefix:
                parts = [(cache.rows(rows), positions[rows])]
            else:  # the reference: every prefix recomputed from its segments
                parts = [self._after_boi([row.context() for row in contexts])[:2]]
            if two or three:
                parts.append(self._after_boi([([], [])] * G)[:2])
            if three:
                parts.append(self._after_boi([row.images_only() for row in contexts])[:2])
            length = max(c.length for c, _ in parts)
            return KVCache.concat([c.left_pad(length) for c, _ in parts]), torch.cat([p for _, p in parts])

        def block(prefix: KVCache, pos: torch.Tensor):
            """Inputs of the n image columns of every branch row, and their attention mask."""
            R = len(pos)
            arange = torch.arange(n, device=self.device)
            tokens = torch.full((R, n), self.tok.pad_id, dtype=torch.long, device=self.device)
            doc = torch.zeros(R, n, dtype=torch.long, device=self.device)
            image = torch.full((R, n), int(prefix.image.max()) + 1, dtype=torch.long, device=self.device)
            index = torch.arange(R, device=self.device)[:, None] * n + arange  # (R, n) flat positions
            mask = self.model.mask(doc, image, prefix.doc, prefix.image)
            return prefix, (tokens, pos[:, None] + arange, doc, image), index, mask

        fixed = block(*branches()) if self.cache_prefix else None  # built once: the prefix is fixed
        k = 1 + (two or three) + three  # rows per image: conditional, [unconditional], [image-only]

        def predict_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            prefix, inputs, index, mask = fixed or block(*branches())
            group = ImageGroup(x.repeat(k, 1, 1, 1), t.repeat(k), index)
            _, (eps,) = self.run(prefix, *inputs, [group], write=False, mask=mask)
            parts = eps.split(G)
            if three:
                c, u, i = parts
                return u + s_img * (i - u) + s_txt * (c - i)
            if two:
                c, u = parts
                return u + s_txt * (c - u)
            return parts[0]

        return sample(predict_noise, (G, C, h, w), self.diffusion, req.sampler, req.steps, generators,
                      clip=self.model.cfg.image.clip_sample, device=self.device, progress=self.progress)

    @torch.no_grad()
    def image_tokens(self, cache: KVCache, rows: torch.Tensor, positions: torch.Tensor, req: Request,
                     generators: list[torch.Generator], boi_hidden: torch.Tensor) -> torch.Tensor:
        """VQ codes (G, h, w) of an image for each row in ``rows`` (their last input was BOI,
        whose hidden states are ``boi_hidden`` (G, D)), sampled token by token."""
        _, h, w = self.ae.latent_shape(*req.image_size)
        n, G, V = h * w, len(rows), self.model.vocab_size
        limit = self.model.cfg.model.max_seq_len
        if int(positions[rows].max()) + n + 1 > limit:
            raise ValueError(f"an image of {n} tokens does not fit in the context (model.max_seq_len={limit})")
        guided = req.guidance != 1.0
        parts = [(cache.rows(rows), positions[rows].clone(), boi_hidden)]
        if guided:
            parts.append(self._after_boi([([], [])] * G))  # unconditional rows: BOS BOI
        length = max(c.length for c, _, _ in parts)
        branch = KVCache.concat([c.left_pad(length) for c, _, _ in parts])
        pos, hidden = torch.cat([p for _, p, _ in parts]), torch.cat([x for _, _, x in parts])
        active = torch.ones(len(pos), dtype=torch.bool, device=self.device)
        codes = []
        for i in range(n):
            logits = self.model.logits(hidden).float()[:, V:]  # (R, K): image codes only
            if guided:
                c, u = logits.split(G)
                logits = u + req.guidance * (c - u)
            codes.append(self.pick(logits, req.image_temperature, req, generators))
            if i + 1 < n:
                hidden = self.step_text(branch, (codes[-1] + V).repeat(len(parts)), pos, active)
        return torch.stack(codes, 1).view(G, h, w)

    def write_image(self, cache: KVCache, rows: torch.Tensor, latents: torch.Tensor, positions: torch.Tensor) -> None:
        """Put finished images into the cache as context for ``rows``: latents (G, C, h, w), clean
        (t = 0), or for image tokens VQ codes (G, h, w)."""
        B, n = cache.doc.shape[0], self.model.num_patches(tuple(latents.shape[-2:]))
        arange = torch.arange(n, device=self.device)
        tokens = torch.full((B, n), self.tok.pad_id, dtype=torch.long, device=self.device)
        doc = torch.full((B, n), PAD_DOC, dtype=torch.long, device=self.device)
        image = torch.full((B, n), -1, dtype=torch.long, device=self.device)
        block_positions = torch.zeros(B, n, dtype=torch.long, device=self.device)
        doc[rows] = 0
        block_positions[rows] = positions[rows, None] + arange
        if self.codes:
            tokens[rows] = latents.flatten(1) + self.model.vocab_size
            self.run(cache, tokens, block_positions, doc, image)
        else:
            image[rows] = int(cache.image.max()) + 1
            index = rows[:, None] * n + arange
            t = torch.zeros(len(rows), dtype=torch.long, device=self.device)
            self.run(cache, tokens, block_positions, doc, image, [ImageGroup(latents, t, index)])
        positions[rows] += n

    # ---------------------------------------------------------------- interleaved generation
    @torch.no_grad()
    def generate(self, prompts: list[list], req: Request = Request(), force_image: bool = False) -> list[list]:
        """Continue each prompt with text and images; returns the generated Text / Image segments per row.

        A row stops at EOS, a stop string, ``max_new_tokens`` or when it asks for more than
        ``max_images`` images. ``force_image`` makes BOI the first generated token.
        """
        req = req.resolve(self.model.cfg)
        self.model.num_patches(self.ae.latent_shape(*req.image_size)[1:])  # a size the model cannot take fails first
        latents = self.encode(prompts)
        rows = [Row(list(p), list(lat)) for p, lat in zip(prompts, latents)]
        cache, positions, last = self.prefill(prompts, latents)
        B = len(prompts)
        generators = [torch.Generator().manual_seed(req.seed + b) for b in range(B)]
        produced = torch.zeros(B, dtype=torch.long, device=self.device)  # text tokens generated per row
        fed = self.sample_token(last, req, generators, produced < req.min_new_tokens)
        if force_image:
            fed = torch.full_like(fed, self.tok.boi_id)
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        for _ in range(req.max_new_tokens):
            for b, row in enumerate(rows):  # stop before feeding what ends a row
                tok = int(fed[b])
                if done[b]:
                    continue
                if tok == self.tok.eos_id or (tok == self.tok.boi_id and row.images >= req.max_images):
                    done[b] = True
                elif tok not in self.tok.special_ids:
                    row.pending.append(tok)
                    produced[b] += 1
                    if any(s in self.tok.decode(row.pending) for s in req.stop):
                        done[b] = True
            if bool(done.all()):
                break
            hidden = self.step_text(cache, fed, positions, ~done)
            wants_image = ~done & (fed == self.tok.boi_id)
            nxt = self.sample_token(hidden, req, generators, produced < req.min_new_tokens)
            if bool(wants_image.any()):
                idx = wants_image.nonzero()[:, 0]
                for r in idx.tolist():
                    rows[r].close_text(self.tok)
                gens = [generators[r] for r in idx.tolist()]
                if self.codes:
                    made = self.image_tokens(cache, idx, positions, req, gens, hidden[idx])
                    pixels = self.ae.detokenize(made).cpu()
                else:
                    made = self.denoise(cache, idx, positions, req, gens, [rows[r] for r in idx.tolist()])
                    pixels = self.ae.decode(made).clamp(-1, 1).cpu()
                self.write_image(cache, idx, made, positions)
                for r, latent, img in zip(idx.tolist(), made, pixels):
                    rows[r].add_image(Image(img), latent)
                nxt = torch.where(wants_image, torch.full_like(nxt, self.tok.eoi_id), nxt)
            fed = nxt
        for row in rows:
            row.close_text(self.tok)
        return [row.generated for row in rows]
