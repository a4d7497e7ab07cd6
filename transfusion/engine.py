"""Generation with a KV cache: text token by token, images by diffusion, interleaved.

Every row of a batch is one document. Prompts are left-padded so that all rows end at the
same cache column; each call then appends the same number of columns to every row, and a
row with nothing to add that call gets padding columns, which no real position attends to.

- LM mode: one column per step; each row's sampled token is its next input.
- Diffusion mode (a row fed BOI): the prefix never sees the image, so its keys and values
  stay in the cache while each denoising step runs only the n image positions against it;
  classifier-free guidance runs the conditional rows and unconditional rows (BOS BOI
  alone) in one batch. The finished image is written into the cache once, clean (t = 0),
  and the row continues with EOI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from transfusion.autoencoder import Autoencoder
from transfusion.data.document import Image, Text
from transfusion.data.packing import layout
from transfusion.diffusion import Diffusion
from transfusion.model.attention import transfusion_mask
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
    """Sampling settings for one ``generate`` call."""

    max_new_tokens: int = 64
    max_images: int = 1
    temperature: float = 0.0  # 0: greedy (the paper's default)
    top_k: int = 0
    top_p: float = 1.0
    image_size: int | None = None  # pixels; default: the model's image.size
    steps: int | None = None  # DDPM steps; default: the model's diffusion.sample_steps
    guidance: float | None = None  # CFG scale; default: the model's diffusion.guidance
    stop: list[str] = field(default_factory=list)  # stop strings in the generated text
    seed: int = 0  # row b of a batch samples with seed + b, as it would alone with that seed


class Engine:
    def __init__(self, model: Transfusion, tokenizer: Tokenizer, autoencoder: Autoencoder):
        self.model = model.eval()
        self.tok = tokenizer
        self.ae = autoencoder
        self.device = next(model.parameters()).device
        self.diffusion = Diffusion(model.cfg.diffusion.timesteps, model.cfg.diffusion.schedule)

    # ---------------------------------------------------------------- the one forward call
    def run(self, cache: KVCache, tokens, positions, doc, image, groups=(), write: bool = True):
        """Append columns (B, L) to the cached rows; returns hidden (B, L, D) and noise predictions."""
        mask = transfusion_mask(doc, image, cache.doc, cache.image)  # (B, L, S + L)
        present: list = []
        hidden, noise = self.model(tokens, positions, doc, image, list(groups), mask=mask[:, None],
                                   past=cache.kv, present=present)
        if write:
            cache.append(present, doc, image)
        return hidden, noise

    # ---------------------------------------------------------------- prompts
    @torch.no_grad()
    def prefill(self, prompts: list[list]) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
        """Left-padded prompts (lists of Text / Image segments, images clean) into a new cache.

        Returns the cache, each row's next position (B,) and the last column's hidden (B, D).
        """
        latents = [[self.ae.encode(s.pixels[None].to(self.device))[0] for s in p if isinstance(s, Image)]
                   for p in prompts]
        lays = [layout(p, lat, [0] * len(lat), self.tok, self.model.num_patches, close=False)
                for p, lat in zip(prompts, latents)]
        longest = max(len(lay.ids) for lay in lays)
        limit = self.model.cfg.model.max_seq_len
        if longest > limit:
            raise ValueError(f"the prompt needs {longest} tokens but the model's context is model.max_seq_len={limit}")
        B = len(prompts)
        tokens = torch.full((B, longest), self.tok.pad_id, dtype=torch.long)
        positions = torch.zeros(B, longest, dtype=torch.long)
        doc = torch.full((B, longest), PAD_DOC, dtype=torch.long)
        image = torch.full((B, longest), -1, dtype=torch.long)
        by_shape: dict[tuple, list] = {}
        for b, lay in enumerate(lays):
            start = longest - len(lay.ids)
            ids = torch.tensor(lay.ids)
            tokens[b, start:] = torch.where(ids < 0, self.tok.pad_id, ids)
            positions[b, start:] = torch.arange(len(ids))
            doc[b, start:] = 0
            for i, (img_start, latent, _) in enumerate(lay.images):
                n = self.model.num_patches(tuple(latent.shape[1:]))
                cols = start + img_start + torch.arange(n)
                image[b, cols] = i
                by_shape.setdefault(tuple(latent.shape), []).append((latent, b * longest + cols))
        groups = [ImageGroup(torch.stack([lat for lat, _ in items]),
                             torch.zeros(len(items), dtype=torch.long, device=self.device),
                             torch.stack([idx for _, idx in items]).to(self.device))
                  for items in by_shape.values()]
        cache = KVCache()
        to = lambda t: t.to(self.device)  # noqa: E731
        hidden, _ = self.run(cache, to(tokens), to(positions), to(doc), to(image), groups)
        return cache, (doc >= 0).sum(1).to(self.device), hidden[:, -1]

    # ---------------------------------------------------------------- LM mode
    def sample_token(self, hidden: torch.Tensor, req: Request, generators: list[torch.Generator]) -> torch.Tensor:
        """Next token per row from hidden states (B, D): greedy, or temperature / top-k / top-p
        with row b drawing from ``generators[b]``."""
        logits = self.model.logits(hidden).float()  # (B, V)
        if req.temperature <= 0:
            return logits.argmax(-1)
        logits = logits / req.temperature
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
    def _unconditional(self, count: int) -> tuple[KVCache, torch.Tensor]:
        """Cache and positions of ``count`` rows holding only BOS BOI (the dropped-caption prefix)."""
        cache, positions, _ = self.prefill([[] for _ in range(count)])
        active = torch.ones(count, dtype=torch.bool, device=self.device)
        self.step_text(cache, torch.full((count,), self.tok.boi_id, device=self.device), positions, active)
        return cache, positions

    @torch.no_grad()
    def denoise(self, cache: KVCache, rows: torch.Tensor, positions: torch.Tensor, size: int, steps: int,
                guidance: float, generators: list[torch.Generator]) -> torch.Tensor:
        """Latents (G, C, h, w) of an image for each row in ``rows`` (their last input was BOI).

        Each step runs only the n new image positions against the cached prefix.
        """
        C, h, w = self.ae.latent_shape(size, size)
        n = self.model.num_patches((h, w))
        limit = self.model.cfg.model.max_seq_len
        if int(positions[rows].max()) + n + 1 > limit:
            raise ValueError(f"an image of {n} patches does not fit in the context (model.max_seq_len={limit})")
        G = len(rows)
        both, pos = cache.rows(rows), positions[rows]
        if guidance != 1.0:
            uncond, upos = self._unconditional(G)
            length = max(both.length, uncond.length)
            both = KVCache.concat([both.left_pad(length), uncond.left_pad(length)])
            pos = torch.cat([pos, upos])
        R = len(pos)
        arange = torch.arange(n, device=self.device)
        tokens = torch.full((R, n), self.tok.pad_id, dtype=torch.long, device=self.device)
        doc = torch.zeros(R, n, dtype=torch.long, device=self.device)
        image = torch.full((R, n), int(both.image.max()) + 1, dtype=torch.long, device=self.device)
        index = torch.arange(R, device=self.device)[:, None] * n + arange  # (R, n) flat positions
        positions_block = pos[:, None] + arange

        def predict_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if guidance != 1.0:
                x, t = torch.cat([x, x]), torch.cat([t, t])
            _, (eps,) = self.run(both, tokens, positions_block, doc, image, [ImageGroup(x, t, index)], write=False)
            if guidance != 1.0:
                cond, uncond = eps[:G], eps[G:]
                eps = uncond + guidance * (cond - uncond)
            return eps

        return self.diffusion.sample_ddpm(predict_noise, (G, C, h, w), steps, generators,
                                          clip=self.model.cfg.image.clip_sample, device=self.device)

    def write_image(self, cache: KVCache, rows: torch.Tensor, latents: torch.Tensor, positions: torch.Tensor) -> None:
        """Put finished images (G, C, h, w) into the cache as clean (t = 0) context for ``rows``."""
        B, n = cache.doc.shape[0], self.model.num_patches(tuple(latents.shape[2:]))
        arange = torch.arange(n, device=self.device)
        tokens = torch.full((B, n), self.tok.pad_id, dtype=torch.long, device=self.device)
        doc = torch.full((B, n), PAD_DOC, dtype=torch.long, device=self.device)
        image = torch.full((B, n), -1, dtype=torch.long, device=self.device)
        block_positions = torch.zeros(B, n, dtype=torch.long, device=self.device)
        doc[rows] = 0
        image[rows] = int(cache.image.max()) + 1
        block_positions[rows] = positions[rows, None] + arange
        index = rows[:, None] * n + arange
        t = torch.zeros(len(rows), dtype=torch.long, device=self.device)
        self.run(cache, tokens, block_positions, doc, image, [ImageGroup(latents, t, index)])
        positions[rows] += n

    # ---------------------------------------------------------------- interleaved generation
    @torch.no_grad()
    def generate(self, prompts: list[list], req: Request = Request(), force_image: bool = False) -> list[list]:
        """Continue each prompt with text and images; returns a list of Text / Image segments per row.

        A row stops at EOS, a stop string, ``max_new_tokens`` or when it asks for more than
        ``max_images`` images. ``force_image`` makes BOI the first generated token.
        """
        cfg = self.model.cfg
        size = req.image_size or cfg.image.size
        steps = req.steps or cfg.diffusion.sample_steps
        guidance = cfg.diffusion.guidance if req.guidance is None else req.guidance
        self.ae.latent_shape(size, size)  # a size the autoencoder cannot take fails before any work
        cache, positions, last = self.prefill(prompts)
        B = len(prompts)
        generators = [torch.Generator().manual_seed(req.seed + b) for b in range(B)]
        fed = self.sample_token(last, req, generators)
        if force_image:
            fed = torch.full_like(fed, self.tok.boi_id)
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        outputs: list[list] = [[] for _ in range(B)]
        text_ids: list[list[int]] = [[] for _ in range(B)]
        images_made = [0] * B
        for _ in range(req.max_new_tokens):
            for b in range(B):  # stop before feeding what ends a row
                tok = int(fed[b])
                if done[b]:
                    continue
                if tok == self.tok.eos_id or (tok == self.tok.boi_id and images_made[b] >= req.max_images):
                    done[b] = True
                elif tok not in self.tok.special_ids:
                    text_ids[b].append(tok)
                    if any(s in self.tok.decode(text_ids[b]) for s in req.stop):
                        done[b] = True
            if bool(done.all()):
                break
            hidden = self.step_text(cache, fed, positions, ~done)
            wants_image = ~done & (fed == self.tok.boi_id)
            nxt = self.sample_token(hidden, req, generators)
            if bool(wants_image.any()):
                rows = wants_image.nonzero()[:, 0]
                latents = self.denoise(cache, rows, positions, size, steps, guidance,
                                       [generators[r] for r in rows.tolist()])
                self.write_image(cache, rows, latents, positions)
                pixels = self.ae.decode(latents).clamp(-1, 1).cpu()
                for row, img in zip(rows.tolist(), pixels):
                    if text_ids[row]:
                        outputs[row].append(Text(self.tok.decode(text_ids[row])))
                        text_ids[row] = []
                    outputs[row].append(Image(img))
                    images_made[row] += 1
                nxt = torch.where(wants_image, torch.full_like(nxt, self.tok.eoi_id), nxt)
            fed = nxt
        for b in range(B):
            if text_ids[b]:
                outputs[b].append(Text(self.tok.decode(text_ids[b])))
        return outputs
