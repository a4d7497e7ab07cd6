"""A VQ autoencoder: images <-> grids of discrete codes, for the Chameleon-style baseline.

    vq = VQAutoencoder(codebook_size=512, code_dim=8, downsample=4)
    train_vq(vq, dataset, steps=1500, batch_size=16)
    codes = vq.tokenize(pixels)        # (B, 3, 32, 32) -> (B, 8, 8) long in [0, 512)
    pixels = vq.detokenize(codes)      # and back, clamped to [-1, 1]

The encoder and decoder are those of ``KLAutoencoder``; between them each latent vector is
replaced by its nearest codebook entry (van den Oord et al. 2017). Vectors and codes are
compared after l2 normalisation (cosine distance, as in ViT-VQGAN), which keeps codebook
usage high at small sizes. Training: reconstruction (L1 + MSE) + codebook loss +
``beta`` * commitment loss, straight-through gradients to the encoder, and codes unused for
a while restarted at random encoder outputs. As an ``Autoencoder`` it encodes to the
(normalised) code vectors, so it also works wherever continuous latents are expected.
"""

from __future__ import annotations

import collections
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from transfusion.autoencoder import (Autoencoder, _batches, _device, conv_decoder, conv_encoder,
                                     optimizer_and_schedule)

DEFAULT_CODEBOOK_SIZE, DEFAULT_CODE_DIM = 512, 8


class VQAutoencoder(Autoencoder):
    def __init__(self, channels: int = 3, codebook_size: int = DEFAULT_CODEBOOK_SIZE, code_dim: int = DEFAULT_CODE_DIM,
                 downsample: int = 4, width: int = 16):
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {codebook_size}")
        self.channels, self.latent_channels = channels, code_dim
        self.codebook_size, self.downsample, self.width = codebook_size, downsample, width
        self.encoder = conv_encoder(channels, code_dim, downsample, width)
        self.decoder = conv_decoder(code_dim, channels, downsample, width)
        self.codebook = nn.Embedding(codebook_size, code_dim)

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
        self._check_pixels(pixels)
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
        self._check_latents(latents)
        return self.decoder(latents).clamp(-1, 1)

    def config(self) -> dict:
        return {"type": "vq", "channels": self.channels, "codebook_size": self.codebook_size,
                "code_dim": self.latent_channels, "downsample": self.downsample, "width": self.width}


def codebook_stats(codes: torch.Tensor, codebook_size: int) -> dict:
    """Share of the codebook in use and the perplexity of code frequencies (<= codebook_size)."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"usage": float((counts > 0).float().mean()), "perplexity": math.exp(entropy)}


def train_vq(model: VQAutoencoder, data, steps: int, batch_size: int = 16, lr: float = 2e-3, beta: float = 0.25,
             restart_every: int = 100, seed: int = 0, progress: bool = True) -> dict:
    """Train ``model`` in place on images of ``data`` (as ``train_autoencoder`` takes them).

    Every ``restart_every`` steps, codes chosen by no vector of the window are moved onto
    random encoder outputs of the current batch (dead-code restart). Returns the final
    model's "mse" and "l1" of reconstructing the last <= 256 training images, codebook
    "usage" and "perplexity" on them, and "seconds".
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    generator = torch.Generator().manual_seed(seed)
    device = _device(model)
    batches = _batches(data, batch_size, generator)
    optimizer, schedule = optimizer_and_schedule(model, lr, steps, weight_decay=0.0)
    used = torch.zeros(model.codebook_size, dtype=torch.bool, device=device)
    last_batches = collections.deque(maxlen=max(1, 256 // batch_size))
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="vq autoencoder", disable=not progress)
    for step in bar:
        pixels = next(batches).to(device)
        last_batches.append(pixels)
        z = F.normalize(model.encoder(pixels), dim=1)  # (B, D, h, w)
        codes = model._codes_of(z.detach())
        zq = model.embed(codes)
        codebook_loss = F.mse_loss(zq, z.detach())
        commitment = F.mse_loss(z, zq.detach())
        recon = model.decoder(z + (zq - z).detach())  # straight-through
        l1, mse = (recon - pixels).abs().mean(), (recon - pixels).square().mean()
        loss = l1 + mse + codebook_loss + beta * commitment
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        used[codes.flatten()] = True
        if (step + 1) % restart_every == 0 and step + 1 < steps:
            dead = (~used).nonzero()[:, 0]
            if len(dead):
                pool = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                pick = torch.randint(len(pool), (len(dead),), generator=generator).to(device)
                with torch.no_grad():
                    model.codebook.weight[dead] = pool[pick]
            used.zero_()
        if step % 20 == 0:
            bar.set_postfix(mse=f"{mse.item():.4f}", used=f"{int(used.sum())}", refresh=False)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pixels = torch.cat(list(last_batches))
        codes = torch.cat([model.tokenize(chunk) for chunk in pixels.split(batch_size)])
        recon = torch.cat([model.detokenize(chunk) for chunk in codes.split(batch_size)])
    return {"mse": (recon - pixels).square().mean().item(), "l1": (recon - pixels).abs().mean().item(),
            **codebook_stats(codes, model.codebook_size), "seconds": seconds}
