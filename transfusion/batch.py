"""What the data side hands the model: the types both import, so neither imports the other.

``ImageGroup`` carries images of one latent shape and where their patches sit in the packed
rows; ``IGNORE`` marks positions with no next-token target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # target of a position with no next-token loss (cross_entropy's ignore_index)


@dataclass
class ImageGroup:
    """Images of one latent shape, placed in the packed rows.

    latents: (N, C, h, w) noisy latents (or clean context, fed at ``diffusion.CONTEXT_T``);
    t: (N,) long timesteps; index: (N, P) long flat positions (row * L + col) of the patches;
    reference: (N, C, h, w) the clean latents of the image each one edits (zeros for none), or
    None for no edits (``image.edit_reference``).
    """

    latents: torch.Tensor
    t: torch.Tensor
    index: torch.Tensor
    reference: torch.Tensor | None = None
