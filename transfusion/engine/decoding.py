"""Choosing a token from logits, and combining classifier-free guidance branches: pure functions."""

from __future__ import annotations

import torch

# guidance branches: each is one set of extra rows in the same forward batch
CONDITIONAL = "conditional"  # the row's whole context
UNCONDITIONAL = "unconditional"  # BOS only: a dropped caption, as in training
IMAGE_ONLY = "image_only"  # the context's images without its text


def guidance_branches(scale: float, image_scale: float | None = None, has_images: bool = False) -> tuple[str, ...]:
    """The branches one guided prediction needs, conditional first.

    No guidance at scale 1; one scale: conditional and unconditional; a separate scale for
    context images (editing-style prompts that hold images): all three.
    """
    if image_scale is not None and image_scale != scale and has_images:
        return CONDITIONAL, UNCONDITIONAL, IMAGE_ONLY
    if scale != 1.0:
        return CONDITIONAL, UNCONDITIONAL
    return (CONDITIONAL,)


def combine_guidance(predictions: dict[str, torch.Tensor], scale: float, image_scale: float | None = None):
    """One prediction (noise or logits) from the branches' ``predictions``.

    u + s (c - u) with one scale; u + s_img (i - u) + s_txt (c - i) with a separate image
    scale (InstructPix2Pix's rule); the conditional prediction alone without guidance.
    """
    c = predictions[CONDITIONAL]
    if UNCONDITIONAL not in predictions:
        return c
    u = predictions[UNCONDITIONAL]
    if IMAGE_ONLY in predictions:
        i = predictions[IMAGE_ONLY]
        return u + image_scale * (i - u) + scale * (c - i)
    return u + scale * (c - u)


def choose_token(logits: torch.Tensor, generators: list[torch.Generator], temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Index per row of logits (B, V): argmax at temperature 0, else sampled (after top-k
    and top-p filtering) with row b drawing from ``generators[b]``. -> (B,) long."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        beyond = probs.cumsum(-1) - probs > top_p  # tokens after the nucleus is full
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(beyond, float("-inf")))
    probs = logits.softmax(-1).cpu()
    picks = [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)]
    return torch.cat(picks).to(logits.device)


def forbid(logits: torch.Tensor, ids: list[int], rows: torch.Tensor) -> torch.Tensor:
    """Logits (B, V), in place, with tokens ``ids`` made impossible in the rows where ``rows`` (B,) is set."""
    ids = torch.tensor(ids, device=logits.device)
    logits[:, ids] = logits[:, ids].masked_fill(rows[:, None].to(logits.device), float("-inf"))
    return logits
