"""The Transfusion attention mask and the one attention entry point.

Three paths, chosen by ``model.attention``:
- ``sdpa``: ``scaled_dot_product_attention`` with a dense boolean mask (B, 1, L, S). Runs
  everywhere; the default.
- ``chunked``: the same kernel a block of queries at a time, each block over only the keys
  the rule lets it see (its documents, up to the end of its images), with that block's
  mask built from the ids (``ChunkedMask``): no (L, L) mask, and packed rows skip the keys
  of other documents. Exact: the same rule, the same kernel.
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
    S = key_docs.shape[1] - doc_ids.shape[1]
    return _allowed(doc_ids, image_ids, S, key_docs, key_images, 0)


def _allowed(q_docs: torch.Tensor, q_images: torch.Tensor, q_start: int,
             k_docs: torch.Tensor, k_images: torch.Tensor, k_start: int) -> torch.Tensor:
    """The rule of ``transfusion_mask`` for queries (B, Lq) at row positions q_start.. over keys
    (B, Lk) at k_start..: (B, Lq, Lk) bool."""
    device = q_docs.device
    q_at = torch.arange(q_start, q_start + q_docs.shape[1], device=device)
    k_at = torch.arange(k_start, k_start + k_docs.shape[1], device=device)
    causal = q_at[:, None] >= k_at[None, :]
    same_doc = q_docs[:, :, None] == k_docs[:, None, :]
    same_image = (q_images[:, :, None] == k_images[:, None, :]) & (q_images[:, :, None] >= 0)
    return same_doc & (causal | same_image)


class ChunkedMask:
    """The rule of ``transfusion_mask`` over one (B, L) batch, applied ``chunk`` queries at a time.

    For queries [a, b) the keys that can be seen lie in [lo, hi): lo is the first position
    of the earliest document among them, hi the end of the latest image they belong to (a
    patch sees its whole image), at least b. Only that (B, b - a, hi - lo) block of the mask
    is ever built.
    """

    def __init__(self, doc_ids: torch.Tensor, image_ids: torch.Tensor, chunk: int = 512):
        B, L = doc_ids.shape
        self.doc_ids, self.image_ids, self.chunk = doc_ids, image_ids, chunk
        index = torch.arange(L, device=doc_ids.device).expand(B, L)
        new_doc = torch.ones_like(doc_ids, dtype=torch.bool)
        new_doc[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
        # (B, L): where each position's document starts; where its image ends (itself if no patch)
        self.doc_start = torch.where(new_doc, index, 0).cummax(dim=1).values
        patch = image_ids >= 0
        n = int(image_ids.max()) + 1 if patch.any() else 1
        image_key = torch.arange(B, device=doc_ids.device)[:, None] * n + image_ids.clamp(min=0)  # (row, image)
        ends = torch.full((B * n,), -1, dtype=torch.long, device=doc_ids.device)
        ends.scatter_reduce_(0, image_key[patch], index[patch], reduce="amax")  # each image's last position
        self.image_end = torch.where(patch, ends[image_key], index)

    def blocks(self):
        """Yield (a, b, lo, hi, mask): queries [a, b), keys [lo, hi), mask (B, 1, b - a, hi - lo) bool."""
        L = self.doc_ids.shape[1]
        for a in range(0, L, self.chunk):
            b = min(L, a + self.chunk)
            lo = int(self.doc_start[:, a].min())
            hi = max(b, int(self.image_end[:, a:b].max()) + 1)
            mask = _allowed(self.doc_ids[:, a:b], self.image_ids[:, a:b], a,
                            self.doc_ids[:, lo:hi], self.image_ids[:, lo:hi], lo)
            yield a, b, lo, hi, mask.unsqueeze(1)


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

    ``mask`` is a dense bool tensor broadcastable to (B, H, L, S), a ``ChunkedMask`` (L = S, no
    cache), or a FlexAttention BlockMask.
    """
    if isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if isinstance(mask, ChunkedMask):
        return torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, lo:hi], v[:, :, lo:hi], attn_mask=m)
                          for a, b, lo, hi, m in mask.blocks()], dim=2)
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
