"""The Transfusion attention mask and the one attention entry point.

Two paths, chosen by ``model.attention``:
- ``sdpa``: ``scaled_dot_product_attention`` with a dense boolean mask (B, 1, L, S). Runs
  everywhere; the default and the only path with a backward pass on CPU.
- ``flex``: FlexAttention with a block mask built from the same rule, for CUDA, where it
  skips the fully masked blocks of packed rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def transfusion_mask(
    doc_ids: torch.Tensor,
    image_ids: torch.Tensor,
    past_doc_ids: torch.Tensor | None = None,
    past_image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which positions each position may attend to.

    Causal over the whole row, plus full attention among the patches of one image, and
    nothing across a document boundary. For a row ``t t B p p p E t`` (B = BOI, p = patch,
    E = EOI) followed by a second packed document ``t t``:

                 t t B p p p E t | t t
        t        x . . . . . . . | . .
        t        x x . . . . . . | . .
        B        x x x . . . . . | . .
        p        x x x x x x . . | . .    <- a patch sees every patch of its image
        p        x x x x x x . . | . .
        p        x x x x x x . . | . .
        E        x x x x x x x . | . .
        t        x x x x x x x x | . .
        ---------------------------------
        t        . . . . . . . . | x .    <- another document: its own causal block
        t        . . . . . . . . | x x

    Args:
        doc_ids: (B, L) int, the document each position belongs to (padding has its own id).
        image_ids: (B, L) int, the image a patch belongs to, -1 for every non-patch position.
        past_doc_ids, past_image_ids: (B, S) int, the same for S earlier positions whose keys
            are cached (generation); the L positions come after them.
    Returns:
        (B, L, S + L) bool, True where query i may attend to key j.
    """
    if past_doc_ids is not None:
        key_docs, key_images = torch.cat([past_doc_ids, doc_ids], 1), torch.cat([past_image_ids, image_ids], 1)
    else:
        key_docs, key_images = doc_ids, image_ids
    L, S = doc_ids.shape[1], key_docs.shape[1] - doc_ids.shape[1]
    causal = torch.ones(L, S + L, dtype=torch.bool, device=doc_ids.device).tril(diagonal=S)
    same_doc = doc_ids[:, :, None] == key_docs[:, None, :]
    same_image = (image_ids[:, :, None] == key_images[:, None, :]) & (image_ids[:, :, None] >= 0)
    return same_doc & (causal | same_image)


def flex_block_mask(doc_ids: torch.Tensor, image_ids: torch.Tensor):
    """The same rule as ``transfusion_mask``, as a FlexAttention BlockMask."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, kv):
        same_doc = doc_ids[b, q] == doc_ids[b, kv]
        same_image = (image_ids[b, q] == image_ids[b, kv]) & (image_ids[b, q] >= 0)
        return same_doc & ((q >= kv) | same_image)

    B, L = doc_ids.shape
    return create_block_mask(mask_mod, B, None, L, L, device=doc_ids.device)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
    """Attention over (B, H, L, hd) queries and (B, H, S, hd) keys/values -> (B, H, L, hd).

    ``mask`` is a dense bool tensor broadcastable to (B, H, L, S), or a FlexAttention BlockMask.
    """
    if isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return _flex_attention(q.is_cuda)(q, k, v, block_mask=mask)


_COMPILED_FLEX = None


def _flex_attention(cuda: bool):
    """FlexAttention: compiled into a fused kernel on CUDA (the eager version materialises
    every score), eager elsewhere (CPU tests compare it with sdpa)."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if not cuda:
        return flex_attention
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX
