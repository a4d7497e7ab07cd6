"""Image to text as a policy: captions sampled token by token, each token's log-probability exact.

    policy = CaptionPolicy(model, tokenizer, autoencoder, cfg)
    rollout = policy.rollout(model, prompts, generator)     # prompts carry their image (Prompt.source)
    log_probs, mask = policy.log_probs(model, rollout)      # (N, L) with gradient; mask: real tokens

A caption is what follows ``<bos> <boi> patches <eoi>`` (the image clean, as training shows an
image before its caption), sampled at temperature 1 from the text vocabulary with ``<boi>``
and padding excluded (a caption holds no image), until ``<eos>`` (which is itself an action the
policy learns) or ``CAPTION_TOKENS`` tokens (as ``transfusion eval --suite i2t`` allows). The
log-probability of the rollout's tokens under a model is read in one teacher-forced pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transfusion.batch import ImageGroup
from transfusion.data.document import Image, Tokens
from transfusion.data.packing import CONTEXT_IMAGE, layout, pack
from transfusion.diffusion import CONTEXT_T
from transfusion.posttrain.objective import clipped_objective
from transfusion.posttrain.rewards import judged_captions, score_captions
from transfusion.visualize import image_grid

CAPTION_TOKENS = 24


@dataclass
class CaptionRollout:
    prompts: list[str]  # each with its image (``Prompt.source``) and scene (``Prompt.meta``)
    device: torch.device
    tokens: list[list[int]]  # each caption's sampled ids, <eos> included when it was sampled
    log_probs: torch.Tensor  # (N, L): each token's log-probability when sampled (0 past a caption's end)
    mask: torch.Tensor  # (N, L) bool: the caption's tokens
    reference: torch.Tensor | None  # (N, L): the starting model's log-probabilities, for the KL term
    latents: list[torch.Tensor]  # each prompt's image, encoded once when sampled; every later pass reads them

    def texts(self, tokenizer) -> list[str]:
        return [tokenizer.decode([i for i in ids if i != tokenizer.eos_id]) for ids in self.tokens]


class CaptionPolicy:
    """Sampling captions of a run's images, and the log-probabilities of sampled captions."""

    def __init__(self, model, tokenizer, autoencoder, cfg):
        self.tokenizer, self.autoencoder, self.num_patches = tokenizer, autoencoder, model.num_patches
        self.vocab, self.max_tokens = model.vocab_size, CAPTION_TOKENS
        self.flow = cfg.diffusion.objective == "flow"
        self.banned = torch.zeros(self.vocab, dtype=torch.bool)  # a caption holds no image, padding or new document
        self.banned[[tokenizer.boi_id, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eoi_id]] = True

    def latents(self, prompts, device) -> list[torch.Tensor]:
        """Each prompt's image, encoded once per rollout."""
        with torch.no_grad():
            return [self.autoencoder.encode(p.source[None].to(device))[0] for p in prompts]

    def _inputs(self, latents: list[torch.Tensor], captions: list[list[int]], device):
        """Rows ``<bos> <boi> image <eoi> caption``, the image group, and each caption's first column."""
        marker = Image(torch.zeros(3, 1, 1))
        layouts = [layout([marker, Tokens(tuple(ids))], [lat.cpu()], [CONTEXT_IMAGE], self.tokenizer, self.num_patches,
                          close=False) for ids, lat in zip(captions, latents)]
        batch, _ = pack(layouts, len(layouts), max(len(lay.ids) for lay in layouts), self.tokenizer.pad_id,
                        one_per_row=True)
        batch = batch.to(device)
        t = torch.full((len(latents),), CONTEXT_T, device=device, dtype=torch.float32 if self.flow else torch.long)
        group = ImageGroup(torch.stack(latents), t, torch.stack(batch.index))
        starts = [len(lay.ids) - len(ids) for lay, ids in zip(layouts, captions)]  # the first caption token's column
        return batch, group, starts

    def _logits(self, model, batch, group, head_at: torch.Tensor) -> torch.Tensor:
        logits = model(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, [group], head_at=head_at)[0]
        return logits[..., : self.vocab].float().masked_fill(self.banned.to(logits.device), float("-inf"))

    @torch.no_grad()
    def rollout(self, model, prompts, generator: torch.Generator | None = None, reference=None) -> CaptionRollout:
        """One caption per prompt (repeat a prompt for a group), sampled by ``model``."""
        device = next(model.parameters()).device
        captions: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        latents = self.latents(prompts, device)
        for _ in range(self.max_tokens):
            batch, group, starts = self._inputs(latents, captions, device)
            last = torch.zeros_like(batch.tokens, dtype=torch.bool)
            for row, (start, ids) in enumerate(zip(starts, captions)):
                last[row, start + len(ids) - 1] = True
            probs = self._logits(model, batch, group, last).softmax(-1)
            drawn = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].tolist()
            for row, token in enumerate(drawn):
                if not done[row]:
                    captions[row].append(token)
                    done[row] = token == self.tokenizer.eos_id
            if all(done):
                break
        rollout = CaptionRollout(list(prompts), device, captions, torch.zeros(0), torch.zeros(0, dtype=torch.bool), None,
                                 latents)
        rollout.log_probs, rollout.mask = self.log_probs(model, rollout)
        if reference is not None:
            rollout.reference = self.log_probs(reference, rollout)[0]
        return rollout

    def log_probs(self, model, rollout: CaptionRollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sampled token's log-probability under ``model`` (N, L), with the mask of real tokens."""
        device = rollout.device
        batch, group, starts = self._inputs(rollout.latents, rollout.tokens, device)
        L = max(len(ids) for ids in rollout.tokens)
        head_at = torch.zeros_like(batch.tokens, dtype=torch.bool)
        targets = torch.full((len(rollout.tokens), L), self.tokenizer.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros(len(rollout.tokens), L, dtype=torch.bool, device=device)
        for row, (start, ids) in enumerate(zip(starts, rollout.tokens)):
            head_at[row, start - 1 : start - 1 + len(ids)] = True
            targets[row, : len(ids)] = torch.tensor(ids, device=device)
            mask[row, : len(ids)] = True
        logits = self._logits(model, batch, group, head_at)  # (tokens in row order, V)
        picked = logits.log_softmax(-1).gather(1, targets[mask][:, None])[:, 0]
        out = torch.zeros(mask.shape, device=device, dtype=picked.dtype)
        return out.masked_scatter(mask, picked), mask

    # ---------------------------------------------------------------- as GRPO uses a policy
    def outputs(self, rollout: CaptionRollout) -> list[str]:
        return rollout.texts(self.tokenizer)

    def score(self, reward, prompts: list[str], texts: list[str]) -> torch.Tensor:
        return score_captions(reward, prompts, texts)

    def judged(self, prompts: list[str], texts: list[str], group: int = 1) -> dict:
        return judged_captions(prompts, texts, group)

    def grid(self, prompts: list[str], texts: list[str]):
        """The first 32 images under the captions said of them."""
        return image_grid(torch.stack([p.source for p in prompts[:32]]), texts[:32])

    def backward(self, model, rollout: CaptionRollout, advantages: torch.Tensor, pt, generator=None) -> dict:
        """The gradient of one pass of the clipped objective per token, with ``pt.kl`` times the KL
        to the start per token (k3: exp(r) - r - 1 of r = log p_start - log p, never negative),
        averaged over each caption's tokens."""
        mask = rollout.mask.float()
        log_probs, _ = self.log_probs(model, rollout)
        ratio = torch.exp(log_probs - rollout.log_probs)
        per_token = clipped_objective(ratio, advantages[:, None], pt.clip_range)
        stats = {"kl": 0.0}
        if rollout.reference is not None:
            r = rollout.reference - log_probs
            kl = torch.exp(r) - r - 1
            per_token = per_token + pt.kl * kl
            stats["kl"] = ((kl * mask).sum() / mask.sum()).item()
        loss = ((per_token * mask).sum(1) / mask.sum(1)).mean()
        loss.backward()
        clipped = (((ratio - 1).abs() > pt.clip_range).float() * mask).sum() / mask.sum()
        return {**stats, "loss": loss.item(), "clipped": clipped.item()}
