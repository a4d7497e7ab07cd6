"""A small convolutional KL autoencoder, trained here in minutes on CPU."""

from __future__ import annotations

import torch

from transfusion.autoencoders.base import Autoencoder
from transfusion.autoencoders.layers import conv_decoder, conv_encoder


class KLAutoencoder(Autoencoder):
    """A small convolutional KL autoencoder (250k parameters at the default width 16, f = 4).

    Encoder: conv, then per halving a ResBlock and a stride-2 conv, a ResBlock at the
    bottom, then GroupNorm-SiLU-conv to (mean, logvar). The decoder mirrors it with
    nearest-upsample + conv. Channels double at every halving, at most to 4 * width.
    ``scale`` multiplies the posterior mean in ``encode`` so that latents have ~unit std;
    training sets it (``finish_training``), and it is saved with the weights.
    """

    weight_decay = 0.01

    def __init__(self, channels: int = 3, latent_channels: int = 4, downsample: int = 4,
                 width: int = 16, scale: float = 1.0, kl_weight: float = 1e-6):
        super().__init__()
        self.channels, self.latent_channels = channels, latent_channels
        self.downsample, self.width = downsample, width
        self.kl_weight = kl_weight  # a training setting: not saved
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.encoder = conv_encoder(channels, 2 * latent_channels, downsample, width)
        self.decoder = conv_decoder(latent_channels, channels, downsample, width)

    def moments(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, channels, H, W) -> unscaled posterior mean and logvar, each (B, C, H/f, W/f)."""
        mean, logvar = self.encoder(pixels).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.check_pixels(pixels)
        return self.moments(pixels)[0] * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        return self.decoder(latents / self.scale).clamp(-1, 1)

    def config(self) -> dict:
        return {"type": "kl", "channels": self.channels, "latent_channels": self.latent_channels,
                "downsample": self.downsample, "width": self.width, "scale": float(self.scale)}

    # ---- the loss hook of ``training.train_autoencoder``
    def training_loss(self, pixels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """L1 + MSE of the reconstruction of a posterior sample + ``kl_weight`` * KL (summed
        over latent elements, mean over images)."""
        mean, logvar = self.moments(pixels)  # (B, C_lat, h, w) each
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator).to(pixels.device)
        recon = self.decoder(z)
        l1, mse = (recon - pixels).abs().mean(), (recon - pixels).square().mean()
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        return l1 + mse + self.kl_weight * kl, {"mse": mse.detach(), "kl": kl.detach()}

    def after_step(self, step: int, steps: int, generator: torch.Generator) -> None:
        """Nothing to do between KL steps."""

    @torch.no_grad()
    def finish_training(self, pixels: torch.Tensor, batch_size: int) -> dict:
        """Set ``scale`` so that ``encode`` gives latents of unit std on ``pixels``, as the
        diffusion noise schedule assumes."""
        means = torch.cat([self.moments(chunk)[0] for chunk in pixels.split(batch_size)])
        self.scale.fill_(1.0 / means.std().clamp_min(1e-6).item())
        return {"scale": float(self.scale)}
