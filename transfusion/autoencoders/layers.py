"""Convolutional encoder and decoder stacks shared by the KL and VQ autoencoders."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a (1x1-projected when widths differ) skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2, self.conv2 = _norm(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _upsample(in_channels: int, out_channels: int) -> nn.Module:
    """Nearest x2 then a 3x3 conv (no checkerboard artefacts, unlike transposed convs)."""
    return nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(in_channels, out_channels, 3, padding=1))


def _widths(downsample: int, width: int) -> list[int]:
    """Channels at 1, 1/2, 1/4 ... size: doubling at every halving, at most 4 * width."""
    if downsample < 1 or downsample & (downsample - 1):
        raise ValueError(f"downsample must be a power of two (1, 2, 4, 8, ...), got {downsample}")
    return [width * min(2**i, 4) for i in range(downsample.bit_length())]


def conv_encoder(channels: int, out_channels: int, downsample: int, width: int) -> nn.Sequential:
    """Conv, then per halving a ResBlock and a stride-2 conv, a ResBlock at the bottom,
    then GroupNorm-SiLU-conv to ``out_channels``."""
    widths = _widths(downsample, width)
    layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1)]
    for i in range(len(widths) - 1):
        layers += [ResBlock(widths[i], widths[i]), nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)]
    layers += [ResBlock(widths[-1], widths[-1]), _norm(widths[-1]), nn.SiLU(),
               nn.Conv2d(widths[-1], out_channels, 3, padding=1)]
    return nn.Sequential(*layers)


def conv_decoder(latent_channels: int, channels: int, downsample: int, width: int) -> nn.Sequential:
    """The mirror of ``conv_encoder``, with nearest-upsample + conv in place of strided convs."""
    widths = _widths(downsample, width)
    layers: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1), ResBlock(widths[-1], widths[-1])]
    for i in reversed(range(len(widths) - 1)):
        layers += [_upsample(widths[i + 1], widths[i]), ResBlock(widths[i], widths[i])]
    layers += [_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], channels, 3, padding=1)]
    return nn.Sequential(*layers)
