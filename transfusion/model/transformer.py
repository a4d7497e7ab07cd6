"""A Llama-style decoder: pre-norm RMSNorm, SwiGLU MLP, rotary positions, no biases.

With ``model.mot`` (Mixture-of-Transformers, Liang et al. 2024) every norm and projection of
the trunk has one copy for text positions and one for image positions (``ByModality``);
attention stays global over the whole sequence. Routing is the modality of each position
(``Routing``, from the image ids), not learned, and each position runs through its own
copy only: the hidden states are kept grouped by modality between attentions (one
reorder before and one after each attention), so a token costs what it costs in the dense
model.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from transfusion.config import ModelConfig
from transfusion.model.attention import attend


def head_size(cfg: ModelConfig) -> int:
    """Channels per attention head: ``model.head_dim``, or dim // n_heads."""
    return cfg.head_dim or cfg.dim // cfg.n_heads


def llama3_frequencies(freqs: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Llama 3.1's rescaling of the rotary frequencies (Meta's reference code, as transformers'
    ``rope_type: llama3``): channels slower than the original context (wavelength over
    original / low_freq_factor) turn ``rope_factor`` times slower, fast ones (under original /
    high_freq_factor) stay, and those between blend the two by where their wavelength falls."""
    original, factor = cfg.rope_original_max_len, cfg.rope_factor
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    wavelength = 2 * math.pi / freqs
    slow = torch.where(wavelength > original / low, freqs / factor, freqs)
    blend = (original / wavelength - low) / (high - low)
    smoothed = (1 - blend) * freqs / factor + blend * freqs
    between = (wavelength >= original / high) & (wavelength <= original / low)
    return torch.where(between, smoothed, slow)


def rope_table(cfg: ModelConfig) -> torch.Tensor:
    """(max_seq_len, head_dim // 2) complex: each position's rotation of each channel pair."""
    head_dim = head_size(cfg)
    freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if cfg.rope_scaling == "llama3":
        freqs = llama3_frequencies(freqs, cfg)
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, L, hd) by per-position rotations ``rope`` of shape (B, 1, L, hd // 2):
    channel pairs as complex numbers, one complex multiply."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, H, L, hd/2)
    return torch.view_as_real(pairs * rope).flatten(-2).type_as(x)


class Routing:
    """The positions of a (B, L) batch grouped by modality: the B * L rows reordered text first,
    then image (``order``), the first ``n_text`` of them text. Between attentions a MoT trunk
    keeps its hidden states in this grouped order, so each copy reads one contiguous slice."""

    def __init__(self, is_image: torch.Tensor):
        flat = is_image.reshape(-1)
        self.order = torch.argsort(flat.to(torch.int8), stable=True)  # (B*L,): text rows, then image rows
        self.inverse = torch.empty_like(self.order).index_copy_(0, self.order, torch.arange(len(flat), device=flat.device))
        self.n_text, self.shape = int((~flat).sum()), tuple(is_image.shape)

    def group(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B*L, D) in grouped order."""
        return x.reshape(-1, x.shape[-1])[self.order]

    def ungroup(self, x: torch.Tensor) -> torch.Tensor:
        """(B*L, D) in grouped order -> (B, L, D)."""
        return x[self.inverse].view(*self.shape, -1)


class ByModality(nn.Module):
    """Two copies of a layer, ``text`` and ``image``; each position runs through its own."""

    def __init__(self, make):
        super().__init__()
        self.text, self.image = make(), make()

    def forward(self, x: torch.Tensor, route: Routing) -> torch.Tensor:
        """Grouped rows (B*L, D_in) -> (B*L, D_out): the text slice through ``text``, the image
        slice through ``image``."""
        return torch.cat([self.text(x[: route.n_text]), self.image(x[route.n_text :])])


def layer(cfg: ModelConfig, make):
    """``make()`` as is, or with ``model.mot`` one copy per modality."""
    return ByModality(make) if cfg.mot else make()


def run(module: nn.Module, x: torch.Tensor, route: Routing | None) -> torch.Tensor:
    """A layer on hidden states: (B, L, D) for the dense trunk, grouped (B*L, D) rows for MoT."""
    return module(x, route) if isinstance(module, ByModality) else module(x)


def norm_then(norm: nn.Module, module: nn.Module, x: torch.Tensor, route: Routing | None) -> torch.Tensor:
    """``module(norm(x))``; for MoT each modality's slice runs through both of its copies before
    the two slices are joined (one join, not two)."""
    if route is None:
        return module(norm(x))
    n = route.n_text
    return torch.cat([module.text(norm.text(x[:n])), module.image(norm.image(x[n:]))])


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads (``model.n_kv_heads``), optional q/k/v
    biases (Qwen2) and per-head q/k RMSNorm before the rotation (Qwen3). Heads are ``head_size(cfg)``
    wide: q/k/v project dim to heads x head_dim, the output projection heads x head_dim back to dim."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv = cfg.n_heads, cfg.n_kv_heads or cfg.n_heads
        head_dim = head_size(cfg)
        width = (self.n_heads + 2 * self.n_kv) * head_dim
        self.qkv = layer(cfg, lambda: nn.Linear(cfg.dim, width, bias=cfg.qkv_bias))
        self.out = layer(cfg, lambda: nn.Linear(self.n_heads * head_dim, cfg.dim, bias=False))
        self.q_norm = layer(cfg, lambda: nn.RMSNorm(head_dim, eps=cfg.norm_eps)) if cfg.qk_norm else None
        self.k_norm = layer(cfg, lambda: nn.RMSNorm(head_dim, eps=cfg.norm_eps)) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, norm: nn.Module, rope: torch.Tensor, mask, past=None, present=None,
                route: Routing | None = None) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D) (grouped (B*L, D) rows under ``model.mot``); ``norm``, the
        block's pre-attention norm, is applied to x first.

        past: cached (k, v), each (B, H_kv, S, hd), that the L new positions also attend to
        (the mask is then (B, 1, L, S + L)); present: a list that receives this call's own
        (k, v), each (B, H_kv, L, hd), for the caller to cache; route: the modality of each
        position (``model.mot``).
        """
        qkv = norm_then(norm, self.qkv, x, route)
        q, k, v = qkv.unflatten(-1, (self.n_heads + 2 * self.n_kv, -1)).split([self.n_heads, self.n_kv, self.n_kv], -2)
        if self.q_norm is not None:
            q, k = run(self.q_norm, q, route), run(self.k_norm, k, route)
        if route is not None:  # back to (B, L, ...) for the rotation and the global attention
            q, k, v = (route.ungroup(t.flatten(-2)).unflatten(-1, t.shape[-2:]) for t in (q, k, v))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, L, hd), (B, H_kv, L, hd) x 2
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if present is not None:
            present.append((k, v))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if self.n_kv != self.n_heads:  # grouped-query attention: each key/value head serves a group
            k, v = (t.repeat_interleave(self.n_heads // self.n_kv, dim=1) for t in (k, v))
        y = attend(q, k, v, mask).transpose(1, 2).flatten(2)  # (B, L, H * hd); global: across modalities
        return self.out(y) if route is None else self.out(route.group(y), route)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.mlp_hidden or 64 * -(-int(8 * cfg.dim / 3) // 64)
        self.attn_norm = layer(cfg, lambda: nn.RMSNorm(cfg.dim, eps=cfg.norm_eps))
        self.attn = Attention(cfg)
        self.mlp_norm = layer(cfg, lambda: nn.RMSNorm(cfg.dim, eps=cfg.norm_eps))
        self.mlp = layer(cfg, lambda: SwiGLU(cfg.dim, hidden))

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask, past=None, present=None,
                route: Routing | None = None) -> torch.Tensor:
        x = x + self.attn(x, self.attn_norm, rope, mask, past, present, route)
        return x + norm_then(self.mlp_norm, self.mlp, x, route)


class Transformer(nn.Module):
    """The shared trunk: embeddings in, hidden states out; it knows nothing of modalities."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = layer(cfg, lambda: nn.RMSNorm(cfg.dim, eps=cfg.norm_eps))
        self.register_buffer("rope", torch.empty(0), persistent=False)
        self.checkpointing = False  # activation checkpointing: recompute each block in backward
        if not next(self.norm.parameters()).is_meta:
            self.reset_buffers()

    def reset_buffers(self) -> None:
        """Compute the rotary table (after a build on the meta device and ``to_empty``)."""
        cfg = self.cfg
        device = next(self.norm.parameters()).device
        self.rope = rope_table(cfg).to(device)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask, past=None, present=None,
                is_image: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, D), positions: (B, L) long (position within its document) -> (B, L, D).

        past: per layer cached (k, v) (see ``Attention``); present: a list that receives
        each layer's (k, v) of the new positions; is_image: (B, L) bool, the image patches
        (routes ``model.mot``'s copies; ignored by the dense trunk).
        """
        if int(positions.max()) >= self.cfg.max_seq_len:
            raise ValueError(
                f"a document reaches position {int(positions.max())}, beyond model.max_seq_len="
                f"{self.cfg.max_seq_len}"
            )
        rope = self.rope[positions].unsqueeze(1)  # (B, 1, L, hd/2) complex
        route = None
        if self.cfg.mot:  # hidden states in grouped order between attentions (``Routing``)
            route = Routing(is_image if is_image is not None else torch.zeros_like(positions, dtype=torch.bool))
            x = route.group(x)
        for i, block in enumerate(self.blocks):
            layer_present = [] if present is not None else None
            if self.checkpointing and self.training and torch.is_grad_enabled() and past is None and present is None:
                x = checkpoint(block, x, rope, mask, None, None, route, use_reentrant=False)
            else:
                x = block(x, rope, mask, None if past is None else past[i], layer_present, route)
            if present is not None:
                present.extend(layer_present)
        return self.norm(x) if route is None else route.ungroup(self.norm(x, route))
