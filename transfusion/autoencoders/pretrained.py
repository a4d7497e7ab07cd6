"""A pretrained diffusers ``AutoencoderKL`` or ``AutoencoderTiny``, frozen."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from transfusion.autoencoders.base import Autoencoder

DIFFUSERS_CLASSES = ("AutoencoderKL", "AutoencoderTiny")


class DiffusersAutoencoder(Autoencoder):
    """A pretrained diffusers ``AutoencoderKL`` or ``AutoencoderTiny``, frozen.

    ``path_or_hub_name`` is a local folder (``subfolder="vae"`` for a pipeline folder) or a
    Hugging Face hub name, loaded through ``from_pretrained``; the class is picked from the
    folder's config.json. Latents are ``(raw - shift_factor) * scaling_factor`` as in
    diffusers pipelines. ``model`` wraps an already-built diffusers model instead.
    """

    def __init__(self, path_or_hub_name: str | os.PathLike | None = None, subfolder: str | None = None,
                 model: nn.Module | None = None):
        super().__init__()
        if (path_or_hub_name is None) == (model is None):
            raise ValueError("give exactly one of path_or_hub_name and model")
        self.model = load_diffusers(str(path_or_hub_name), subfolder) if model is None else model
        self.model.requires_grad_(False).eval()
        cfg = self.model.config
        self.kind = type(self.model).__name__
        self.channels, self.latent_channels = cfg.in_channels, cfg.latent_channels
        blocks = cfg.encoder_block_out_channels if self.kind == "AutoencoderTiny" else cfg.block_out_channels
        self.downsample = 2 ** (len(blocks) - 1)  # one stride-2 stage between consecutive blocks
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.check_pixels(pixels)
        out = self.model.encode(pixels.to(self.model.dtype))  # the model may be half precision
        raw = out.latents if self.kind == "AutoencoderTiny" else out.latent_dist.mean
        return ((raw - self.shift_factor) * self.scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        raw = (latents / self.scaling_factor + self.shift_factor).to(self.model.dtype)
        return self.model.decode(raw).sample.float().clamp(-1, 1)

    def config(self) -> dict:
        return {"type": "diffusers", "class": self.kind, "diffusers_config": dict(self.model.config)}


def diffusers_class(name: str) -> type:
    import diffusers  # imported lazily: only this class needs it

    if name not in DIFFUSERS_CLASSES:
        raise ValueError(f"diffusers class {name!r} is not supported; expected one of {DIFFUSERS_CLASSES}")
    return getattr(diffusers, name)


def load_diffusers(path_or_hub_name: str, subfolder: str | None) -> nn.Module:
    from diffusers import AutoencoderKL

    where = path_or_hub_name + (f" (subfolder {subfolder!r})" if subfolder else "")
    try:
        class_name = AutoencoderKL.load_config(path_or_hub_name, subfolder=subfolder).get("_class_name")
        return diffusers_class(class_name).from_pretrained(path_or_hub_name, subfolder=subfolder)
    except (OSError, ValueError) as error:  # what diffusers raises for missing, unreachable or malformed models
        raise FileNotFoundError(
            f"could not find or load a diffusers autoencoder at {where}. Give a local folder holding "
            "its config.json and weights; without internet, hub names only work when already in the "
            f"Hugging Face cache. diffusers said: {error}"
        ) from error
