"""Codecs: how one image objective turns pixels into what the model reads, and back.

The Engine picks one when it is built (``build_codec``) and every prompt image and every made
image passes through it:

    latent_shape((H, W)) -> (C, h, w) of an image of H x W pixels
    encode(pixels (1, C_px, H, W)) -> latent (C, h, w) or codes (h, w)
    read(prompts) -> what the model reads of each prompt's images, in order
    as_prompt(segments, encoded) -> (segments, latents) for ``packing.layout``
    to_pixels(made (G, ...)) -> (G, C_px, H, W) in [-1, 1]

``LatentCodec`` (Transfusion, ``image.objective=diffusion``) keeps images as the autoencoder's
continuous latents, placed by ``layout`` as patches; ``CodeCodec`` (the Chameleon baseline,
``image.objective=tokens``) writes each image as the tokens ``BOI codes EOI``, code c being
token ``vocab_size + c``.
"""

from __future__ import annotations

import torch

from transfusion.autoencoders import Autoencoder
from transfusion.data.document import Image, Tokens


class Codec:
    """What both codecs share: the autoencoder, the device prompt images go to, and reading prompts."""

    def __init__(self, autoencoder: Autoencoder, device: torch.device):
        self.ae, self.device = autoencoder, device

    def latent_shape(self, size: tuple[int, int]) -> tuple[int, int, int]:
        """(C, h, w) of what an image of ``size`` = (H, W) pixels becomes; a size the
        autoencoder cannot take (not a multiple of its downsampling) fails here."""
        return self.ae.latent_shape(*size)

    def read(self, prompts: list[list]) -> list[list[torch.Tensor]]:
        """What the model reads of each prompt's Image segments, in order: ``encode`` of each,
        on the engine's device."""
        return [[self.encode(s.pixels[None].to(self.device)) for s in p if isinstance(s, Image)] for p in prompts]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LatentCodec(Codec):
    """Images as continuous latents through the autoencoder (the diffusion objective)."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (1, C_px, H, W) in [-1, 1] -> latent (C, h, w)."""
        return self.ae.encode(pixels)[0]

    def as_prompt(self, segments: list, encoded: list[torch.Tensor]) -> tuple[list, list[torch.Tensor]]:
        """Segments and one latent (C, h, w) per Image segment, unchanged: ``layout`` places the
        latents as patches."""
        return segments, encoded

    def to_pixels(self, made: torch.Tensor) -> torch.Tensor:
        """Latents (G, C, h, w) -> pixels (G, C_px, H, W) clamped to [-1, 1]."""
        return self.ae.decode(made).clamp(-1, 1)


class CodeCodec(Codec):
    """Images as VQ codes read as tokens (image.objective=tokens, the Chameleon baseline)."""

    def __init__(self, autoencoder: Autoencoder, device: torch.device, vocab_size: int, boi_id: int, eoi_id: int):
        super().__init__(autoencoder, device)
        self.vocab_size, self.boi_id, self.eoi_id = vocab_size, boi_id, eoi_id  # code c is token vocab_size + c

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (1, C_px, H, W) in [-1, 1] -> codes (h, w), long."""
        return self.ae.tokenize(pixels)[0]

    def as_prompt(self, segments: list, encoded: list[torch.Tensor]) -> tuple[list, list[torch.Tensor]]:
        """Segments with every Image replaced by the Tokens ``BOI codes EOI`` (its codes (h, w)
        from ``encoded``, row-major); no latents."""
        codes = iter(encoded)
        return [Tokens((self.boi_id, *(next(codes).flatten() + self.vocab_size).tolist(), self.eoi_id))
                if isinstance(s, Image) else s for s in segments], []

    def to_pixels(self, made: torch.Tensor) -> torch.Tensor:
        """Codes (G, h, w) -> pixels (G, C_px, H, W) in [-1, 1]."""
        return self.ae.detokenize(made)


def build_codec(autoencoder: Autoencoder, device: torch.device, image_codes: int, vocab_size: int, boi_id: int,
                eoi_id: int) -> Codec:
    """The codec of a model with ``image_codes`` VQ codes in its vocabulary (tokens objective),
    else (0) the latent one."""
    if image_codes:
        return CodeCodec(autoencoder, device, vocab_size, boi_id, eoi_id)
    return LatentCodec(autoencoder, device)
