"""A VQ autoencoder: images <-> grids of discrete codes, for the Chameleon-style baseline.

    vq = VQAutoencoder(codebook_size=512, code_dim=8, downsample=4)
    train_autoencoder(vq, dataset, steps=1500, batch_size=16)
    codes = vq.tokenize(pixels)        # (B, 3, 32, 32) -> (B, 8, 8) long in [0, 512)
    pixels = vq.detokenize(codes)      # and back, clamped to [-1, 1]

The encoder and decoder are the conv stacks of ``KLAutoencoder``; between them each latent vector is
replaced by its nearest codebook entry (van den Oord et al. 2017). Vectors and codes are
compared after l2 normalisation (cosine distance, as in ViT-VQGAN), which keeps codebook
usage high at small sizes. Training: reconstruction (L1 + MSE) + codebook loss +
``beta`` * commitment loss, straight-through gradients to the encoder, and codes unused for
a while restarted at random encoder outputs. As an ``Autoencoder`` it encodes to the
(normalised) code vectors, so it also works wherever continuous latents are expected.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from transfusion.autoencoders.base import Autoencoder
from transfusion.autoencoders.layers import conv_decoder, conv_encoder

DEFAULT_CODEBOOK_SIZE, DEFAULT_CODE_DIM = 512, 8


class VQAutoencoder(Autoencoder):
    weight_decay = 0.0

    def __init__(self, channels: int = 3, codebook_size: int = DEFAULT_CODEBOOK_SIZE, code_dim: int = DEFAULT_CODE_DIM,
                 downsample: int = 4, width: int = 16, beta: float = 0.25, restart_every: int = 100):
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {codebook_size}")
        self.channels, self.latent_channels = channels, code_dim
        self.codebook_size, self.downsample, self.width = codebook_size, downsample, width
        self.encoder = conv_encoder(channels, code_dim, downsample, width)
        self.decoder = conv_decoder(code_dim, channels, downsample, width)
        self.codebook = nn.Embedding(codebook_size, code_dim)
        self.beta, self.restart_every = beta, restart_every  # training settings: not saved
        self._used: torch.Tensor | None = None  # codes chosen since the last restart (training)
        self._last_z: torch.Tensor | None = None

    def _codes_of(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised vectors (B, D, h, w) -> index of the nearest normalised code (B, h, w)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, D)
        nearest = (flat @ self.code_vectors().T).argmax(-1)  # max cosine = min distance on the sphere
        return nearest.view(z.shape[0], z.shape[2], z.shape[3])

    def code_vectors(self) -> torch.Tensor:
        """The codebook, normalised: (K, D)."""
        return F.normalize(self.codebook.weight, dim=-1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, D, h, w) code vectors."""
        return self.code_vectors()[codes].permute(0, 3, 1, 2)

    @torch.no_grad()
    def tokenize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> codes (B, H/f, W/f) long."""
        self.check_pixels(pixels)
        return self._codes_of(F.normalize(self.encoder(pixels), dim=1))

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> pixels (B, C, h*f, w*f) clamped to [-1, 1]."""
        if codes.ndim != 3 or codes.dtype != torch.long:
            raise ValueError(f"expected long codes (B, h, w), got {codes.dtype} {tuple(codes.shape)}")
        if int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        return self.decoder(self.embed(codes)).clamp(-1, 1)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed(self.tokenize(pixels))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        return self.decoder(latents).clamp(-1, 1)

    def config(self) -> dict:
        return {"type": "vq", "channels": self.channels, "codebook_size": self.codebook_size,
                "code_dim": self.latent_channels, "downsample": self.downsample, "width": self.width}

    # ---- the loss hook of ``training.train_autoencoder``
    def training_loss(self, pixels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Reconstruction (L1 + MSE) + codebook loss + ``beta`` * commitment, straight-through
        gradients to the encoder."""
        z = F.normalize(self.encoder(pixels), dim=1)  # (B, D, h, w)
        codes = self._codes_of(z.detach())
        zq = self.embed(codes)
        codebook_loss = F.mse_loss(zq, z.detach())
        commitment = F.mse_loss(z, zq.detach())
        recon = self.decoder(z + (zq - z).detach())  # straight-through
        l1, mse = (recon - pixels).abs().mean(), (recon - pixels).square().mean()
        if self._used is None:
            self._used = torch.zeros(self.codebook_size, dtype=torch.bool, device=pixels.device)
        self._used[codes.flatten()] = True
        self._last_z = z.detach()
        return l1 + mse + codebook_loss + self.beta * commitment, {"mse": mse.detach(), "used": int(self._used.sum())}

    @torch.no_grad()
    def after_step(self, step: int, steps: int, generator: torch.Generator) -> None:
        """Every ``restart_every`` steps, move the codes no vector chose in that window onto
        random encoder outputs of the current batch (dead-code restart)."""
        if (step + 1) % self.restart_every or step + 1 >= steps:
            return
        dead = (~self._used).nonzero()[:, 0]
        if len(dead):
            pool = self._last_z.permute(0, 2, 3, 1).reshape(-1, self._last_z.shape[1])
            pick = torch.randint(len(pool), (len(dead),), generator=generator).to(pool.device)
            self.codebook.weight[dead] = pool[pick]
        self._used.zero_()

    @torch.no_grad()
    def finish_training(self, pixels: torch.Tensor, batch_size: int) -> dict:
        """Codebook usage and perplexity on ``pixels``."""
        self._used = self._last_z = None
        codes = torch.cat([self.tokenize(chunk) for chunk in pixels.split(batch_size)])
        return codebook_stats(codes, self.codebook_size)


def codebook_stats(codes: torch.Tensor, codebook_size: int) -> dict:
    """Share of the codebook in use and the perplexity of code frequencies (<= codebook_size)."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"usage": float((counts > 0).float().mean()), "perplexity": math.exp(entropy)}
