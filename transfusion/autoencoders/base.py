"""The autoencoder interface: images (B, C, H, W) in [-1, 1] <-> latents (B, C', H/f, W/f)."""

from __future__ import annotations

import abc

import torch
import torch.nn as nn


class Autoencoder(nn.Module, abc.ABC):
    """``channels`` image channels <-> ``latent_channels`` at 1/``downsample`` size, frozen in use.

    ``sample_clip`` is the range predicted x0 is clamped to while sampling: 1 for pixels, 3
    for latents, which have ~unit spread (scaled so) but no fixed range. For latents the clamp
    is a guard, not a range: the cosine schedule's last step (beta clipped at 0.999) leaves
    alpha_bar(T) = 2.4e-9, so a first-step eps error reaches x0 magnified 1 / sqrt(alpha_bar(T))
    = 20,000 times; unclamped, a small model's samples diverge (``samplers.sample``).
    """

    channels: int
    latent_channels: int
    downsample: int
    sample_clip: float = 3.0

    @abc.abstractmethod
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, channels, H, W) in [-1, 1] -> latents (B, latent_channels, H/f, W/f)."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, latent_channels, h, w) -> pixels (B, channels, h*f, w*f) clamped to [-1, 1]."""

    @abc.abstractmethod
    def config(self) -> dict:
        """JSON-able dict with "type" and what else rebuilds this autoencoder (``store.save_autoencoder``)."""

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents of an image of height x width pixels."""
        f = self.downsample
        if height % f or width % f:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the autoencoder's "
                f"downsample factor {f}; use sizes that are multiples of {f}"
            )
        return self.latent_channels, height // f, width // f

    def check_pixels(self, pixels: torch.Tensor) -> None:
        if pixels.ndim != 4 or pixels.shape[1] != self.channels:
            raise ValueError(f"expected pixels (B, {self.channels}, H, W), got {tuple(pixels.shape)}")
        self.latent_shape(pixels.shape[2], pixels.shape[3])

    def check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B, {self.latent_channels}, h, w), got {tuple(latents.shape)}")


class IdentityAutoencoder(Autoencoder):
    """Latents are the pixels: diffusion in pixel space."""

    sample_clip = 1.0  # pixels live in [-1, 1]

    def __init__(self, channels: int = 3):
        super().__init__()
        self.channels = self.latent_channels = channels
        self.downsample = 1

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.check_pixels(pixels)
        return pixels

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        return latents.clamp(-1, 1)

    def config(self) -> dict:
        return {"type": "identity", "channels": self.channels}
