"""Train a small diffusers ``AutoencoderKL`` on a folder of images and save it as a diffusers folder.

    python examples/train_vae.py data/emoji/train --out vae/ [--steps 3000]

Only for when no pretrained one is at hand: with one (e.g. ``stabilityai/sd-vae-ft-mse``
downloaded by ``huggingface-cli download``, or any folder holding an AutoencoderKL's
config.json + weights) skip this and pass that folder as ``autoencoder.name``. This one has
the same layout as Stable Diffusion's (four blocks, so 8x downsampling, 4 latent channels:
64 px -> 8x8x4), narrower, and is trained with the L1 + MSE reconstruction loss and a small
KL term; the loop is the library's (``transfusion.autoencoders.train_autoencoder``), and
``scaling_factor`` is set, as diffusers pipelines expect, so that latents have unit spread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn as nn
from diffusers import AutoencoderKL

from transfusion.autoencoders import load_autoencoder, train_autoencoder
from transfusion.data.ondisk import ImageFolderDocuments
from transfusion.visualize import reconstruction_grid

KL_WEIGHT = 1e-6  # Stable Diffusion's VAE weight on the KL term


class TrainableVAE(nn.Module):
    """The hooks ``train_autoencoder`` calls, around a diffusers AutoencoderKL."""

    weight_decay = 0.0

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def training_loss(self, pixels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        posterior = self.vae.encode(pixels).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = self.vae.decode(z).sample  # (B, 3, H, W)
        l1, mse = (recon - pixels).abs().mean(), (recon - pixels).square().mean()
        kl = posterior.kl().mean()  # summed over latent elements, mean over images
        return l1 + mse + KL_WEIGHT * kl, {"mse": mse.detach(), "kl": kl.detach()}

    def after_step(self, step: int, steps: int, generator: torch.Generator) -> None:
        """Nothing between steps."""

    @torch.no_grad()
    def finish_training(self, pixels: torch.Tensor, batch_size: int) -> dict:
        means = torch.cat([self.vae.encode(chunk).latent_dist.mean for chunk in pixels.split(batch_size)])
        self.vae.register_to_config(scaling_factor=1.0 / means.std().item())
        return {"scaling_factor": self.vae.config.scaling_factor}

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels).latent_dist.mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample.clamp(-1, 1)


def small_vae(width: int) -> AutoencoderKL:
    """Stable Diffusion's VAE layout, ``width`` channels in the first block instead of 128."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(width, 2 * width, 2 * width, 2 * width), layers_per_block=1,
        norm_num_groups=min(32, width),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", help="a folder of images with NAME.txt captions (the training split)")
    parser.add_argument("--out", required=True, help="where to save the diffusers folder")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32, help="channels of the first block")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    torch.manual_seed(0)
    images = ImageFolderDocuments(args.images, image_size=args.size)
    model = TrainableVAE(small_vae(args.width))
    metrics = train_autoencoder(model, images, args.steps, args.batch_size, lr=args.lr)
    model.vae.save_pretrained(args.out)  # config.json + diffusion_pytorch_model.safetensors

    loaded = load_autoencoder(args.out)  # read back the way training will read it
    pixels = torch.stack([images[i].images[0].pixels for i in range(16)])
    with torch.no_grad():
        recon = loaded.decode(loaded.encode(pixels))
    reconstruction_grid(pixels, recon).save(Path(args.out) / "reconstructions.png")
    metrics["parameters"] = sum(p.numel() for p in model.parameters())
    (Path(args.out) / "training.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    print(f"saved a diffusers AutoencoderKL in {args.out} (top row: images, bottom: reconstructions.png)")


if __name__ == "__main__":
    main()
