"""Frozen autoencoders that turn images into what the transformer models.

Images are float tensors (B, 3, H, W) in [-1, 1]; an autoencoder with downsample factor
f and C latent channels maps them to latents (B, C, H/f, W/f) and back:

    ae = load_autoencoder("identity")         # latents are the pixels (f = 1)
    ae = load_autoencoder("runs/ae")          # a folder written by save_autoencoder
    ae = load_autoencoder("path/to/sd-vae")   # a diffusers AutoencoderKL / AutoencoderTiny folder
    z = ae.encode(pixels)                     # deterministic, latents of ~unit std
    pixels = ae.decode(z)                     # clamped to [-1, 1]

The kinds: ``IdentityAutoencoder`` (``base.py``); ``KLAutoencoder`` (``kl.py``), a small
convolutional KL-VAE trained here in minutes on CPU; ``VQAutoencoder`` (``vq.py``), discrete
codes for the Chameleon baseline; ``DiffusersAutoencoder`` (``pretrained.py``). The KL and
VQ kinds train with one loop (``training.py``); ``store.py`` saves, loads and fingerprints.
"""

from transfusion.autoencoders.base import Autoencoder, IdentityAutoencoder
from transfusion.autoencoders.kl import KLAutoencoder
from transfusion.autoencoders.pretrained import DiffusersAutoencoder
from transfusion.autoencoders.store import autoencoder_fingerprint, load_autoencoder, save_autoencoder
from transfusion.autoencoders.training import new_autoencoder, train_autoencoder
from transfusion.autoencoders.vq import VQAutoencoder, codebook_stats

__all__ = ["Autoencoder", "IdentityAutoencoder", "KLAutoencoder", "VQAutoencoder", "DiffusersAutoencoder",
           "load_autoencoder", "save_autoencoder", "autoencoder_fingerprint", "new_autoencoder",
           "train_autoencoder", "codebook_stats"]
