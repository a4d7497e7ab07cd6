"""Modality-specific image layers: noisy latents in, transformer tokens; tokens out, noise.

Two adapters (the paper's section 3.2 and Table 6), chosen by ``image.adapter``:
- ``linear``: patchify k x k, one linear layer to d_model, plus the timestep embedding;
  one linear layer back to k*k*C.
- ``unet``: U-Net down blocks (timestep-conditioned residual blocks, LayerNorm-style
  GroupNorm(1) in place of AdaLN) compress the latent before patchifying; up blocks with
  skip connections from the down blocks decode after the transformer.

2-D position: every patch token gets a learned row embedding plus a learned column
embedding (factorised, so any grid up to ``image.max_grid`` per side works and images of
different sizes share them). The trunk's 1-D RoPE still orders the sequence; the 2-D
embedding tells a patch where it sits in its image, which raster order alone leaves
ambiguous across image widths.

With ``image.edit_reference`` each adapter has a ``reference_in`` layer, zero at the start, that
adds the latents of the image being edited to the noisy input (the same as InstructPix2Pix's
extra input channels with zero weights): an edit can copy what it keeps straight from the
source, not only through attention. It runs on zeros for images that edit nothing, so its
weights take part in every step (DDP, FSDP).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from transfusion.config import ImageConfig


def timestep_features(t: torch.Tensor, dim: int = 128) -> torch.Tensor:
    """Sinusoidal features of diffusion timesteps: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, out_dim: int, feature_dim: int = 128):
        super().__init__()
        self.feature_dim = feature_dim
        self.mlp = nn.Sequential(nn.Linear(feature_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N, out_dim)."""
        return self.mlp(timestep_features(t, self.feature_dim))


def patchify(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/k * W/k, C*k*k), patches in raster order."""
    N, C, H, W = x.shape
    x = x.reshape(N, C, H // k, k, W // k, k).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(N, (H // k) * (W // k), C * k * k)


def unpatchify(x: torch.Tensor, k: int, grid: tuple[int, int]) -> torch.Tensor:
    """(N, gh*gw, C*k*k) -> (N, C, gh*k, gw*k); the inverse of ``patchify``."""
    N, _, D = x.shape
    gh, gw = grid
    C = D // (k * k)
    x = x.reshape(N, gh, gw, C, k, k).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(N, C, gh * k, gw * k)


def _or_zeros(reference: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(latents) if reference is None else reference.to(latents.dtype)


class Position2D(nn.Module):
    def __init__(self, dim: int, max_grid: int):
        super().__init__()
        self.max_grid = max_grid
        self.row = nn.Embedding(max_grid, dim)
        self.col = nn.Embedding(max_grid, dim)

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        """(gh*gw, dim) embeddings in raster order."""
        gh, gw = grid
        if gh > self.max_grid or gw > self.max_grid:
            raise ValueError(f"patch grid {gh}x{gw} exceeds image.max_grid={self.max_grid}")
        rows = self.row.weight[:gh, None, :]
        cols = self.col.weight[None, :gw, :]
        return (rows + cols).reshape(gh * gw, -1)


class LinearImageAdapter(nn.Module):
    def __init__(self, cfg: ImageConfig, latent_channels: int, dim: int):
        super().__init__()
        self.k = cfg.patch_size
        self.reduction = self.k
        patch_dim = latent_channels * self.k**2
        self.time = TimestepEmbedding(dim)
        self.position = Position2D(dim, cfg.max_grid)
        self.proj_in = nn.Linear(patch_dim, dim)
        self.reference_in = nn.Linear(patch_dim, dim) if cfg.edit_reference else None
        self.proj_out = nn.Linear(dim, patch_dim)

    def encode(self, latents: torch.Tensor, t: torch.Tensor, reference: torch.Tensor | None = None):
        """latents (N, C, h, w), t (N,), reference (N, C, h, w) or None -> tokens (N, P, D) and
        what ``decode`` needs."""
        grid = (latents.shape[2] // self.k, latents.shape[3] // self.k)
        tokens = self.proj_in(patchify(latents, self.k)) + self.time(t)[:, None] + self.position(grid)
        if self.reference_in is not None:
            tokens = tokens + self.reference_in(patchify(_or_zeros(reference, latents), self.k))
        return tokens, grid

    def decode(self, hidden: torch.Tensor, grid) -> torch.Tensor:
        """hidden (N, P, D) -> noise prediction (N, C, h, w)."""
        return unpatchify(self.proj_out(hidden), self.k, grid)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, time_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(1, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Linear(time_dim, out_ch)
        self.norm2 = nn.GroupNorm(1, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x (N, in, h, w), temb (N, time_dim) -> (N, out, h, w)."""
        h = self.conv1(F.silu(self.norm1(x))) + self.time(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNetImageAdapter(nn.Module):
    def __init__(self, cfg: ImageConfig, latent_channels: int, dim: int):
        super().__init__()
        chans = list(cfg.unet_channels)
        self.k = cfg.patch_size
        self.reduction = self.k * 2 ** len(chans)
        time_dim = 4 * chans[0]
        self.time = TimestepEmbedding(time_dim)
        self.conv_in = nn.Conv2d(latent_channels, chans[0], 3, padding=1)
        self.reference_in = nn.Conv2d(latent_channels, chans[0], 3, padding=1) if cfg.edit_reference else None
        ins = [chans[0]] + chans[:-1]
        self.down = nn.ModuleList(ResBlock(i, o, time_dim) for i, o in zip(ins, chans))
        self.downsample = nn.ModuleList(nn.Conv2d(o, o, 3, stride=2, padding=1) for o in chans)
        patch_dim = chans[-1] * self.k**2
        self.proj_in = nn.Linear(patch_dim, dim)
        self.position = Position2D(dim, cfg.max_grid)
        self.token_time = nn.Linear(time_dim, dim)
        self.proj_out = nn.Linear(dim, patch_dim)
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(o, o, 2, stride=2) for o in reversed(chans))
        # each up block sees the upsampled features concatenated with its down block's skip
        self.up = nn.ModuleList(ResBlock(2 * o, i, time_dim) for i, o in zip(reversed(ins), reversed(chans)))
        self.norm_out = nn.GroupNorm(1, chans[0])
        self.conv_out = nn.Conv2d(chans[0], latent_channels, 3, padding=1)

    def encode(self, latents: torch.Tensor, t: torch.Tensor, reference: torch.Tensor | None = None):
        """latents (N, C, h, w), t (N,), reference (N, C, h, w) or None -> tokens (N, P, D) and
        what ``decode`` needs."""
        temb = self.time(t)
        x = self.conv_in(latents)
        if self.reference_in is not None:
            x = x + self.reference_in(_or_zeros(reference, latents))
        skips = []
        for block, down in zip(self.down, self.downsample):
            x = block(x, temb)
            skips.append(x)
            x = down(x)  # (N, c, h/2, w/2)
        grid = (x.shape[2] // self.k, x.shape[3] // self.k)
        tokens = self.proj_in(patchify(x, self.k)) + self.token_time(temb)[:, None] + self.position(grid)
        return tokens, (grid, skips, temb)

    def decode(self, hidden: torch.Tensor, context) -> torch.Tensor:
        """hidden (N, P, D) -> noise prediction (N, C, h, w)."""
        grid, skips, temb = context
        x = unpatchify(self.proj_out(hidden), self.k, grid)
        for up, block, skip in zip(self.upsample, self.up, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(x)))


def build_image_adapter(cfg: ImageConfig, latent_channels: int, dim: int) -> nn.Module:
    adapters = {"linear": LinearImageAdapter, "unet": UNetImageAdapter}
    return adapters[cfg.adapter](cfg, latent_channels, dim)
