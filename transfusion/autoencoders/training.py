"""One training loop for every trainable autoencoder; each kind brings its loss hook.

A trainable autoencoder (``KLAutoencoder``, ``VQAutoencoder``) has

    training_loss(pixels, generator) -> (loss, logs)   # one batch, on the module's device
    after_step(step, steps, generator)                 # e.g. the VQ's dead-code restarts
    finish_training(pixels, batch_size) -> metrics     # e.g. the KL's latent scale
    weight_decay                                       # AdamW's, for its weights
"""

from __future__ import annotations

import collections
import itertools
import math
import time

import torch
import torch.nn as nn
from tqdm import tqdm

from transfusion.autoencoders.base import Autoencoder
from transfusion.autoencoders.kl import KLAutoencoder
from transfusion.autoencoders.vq import VQAutoencoder
from transfusion.config import AutoencoderConfig

# `transfusion autoencoder train` defaults: ~80 s on 2 idle CPU cores, test MSE ~0.007 on 32 px shapes
DEFAULT_STEPS, DEFAULT_BATCH_SIZE, DEFAULT_LR = 1000, 16, 2e-3


def new_autoencoder(cfg: AutoencoderConfig, codes: bool = False) -> KLAutoencoder | VQAutoencoder:
    """An untrained autoencoder of ``cfg``'s shape (``autoencoder.name=train``): a KL-VAE, or
    with ``codes`` (``image.objective=tokens``) a VQ whose code vectors have ``latent_channels``."""
    if codes:
        return VQAutoencoder(codebook_size=cfg.codebook_size, code_dim=cfg.latent_channels,
                             downsample=cfg.downsample, width=cfg.width)
    return KLAutoencoder(latent_channels=cfg.latent_channels, downsample=cfg.downsample, width=cfg.width)


def image_of(item) -> torch.Tensor:
    """A dataset item -> its (C, H, W) pixels: a tensor as is, a Document's first image."""
    if isinstance(item, torch.Tensor):
        return item
    if hasattr(item, "images") and item.images:
        return item.images[0].pixels
    raise TypeError(f"expected a (C, H, W) tensor or a Document with an image, got {type(item).__name__}")


def _batches(data, batch_size: int, generator: torch.Generator):
    """Endless (B, C, H, W) batches: random items of an indexable dataset, else cycling an iterable."""
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        if len(data) == 0:
            raise ValueError("cannot train an autoencoder on an empty dataset")
        while True:
            indices = torch.randint(len(data), (batch_size,), generator=generator).tolist()
            yield torch.stack([image_of(data[i]) for i in indices])
    iterator = iter(data)
    while True:
        images = [image_of(item) for item in itertools.islice(iterator, batch_size)]
        if not images:  # end of a pass: start the next one (a one-shot iterator stays empty)
            iterator = iter(data)
            images = [image_of(item) for item in itertools.islice(iterator, batch_size)]
        if not images:
            raise ValueError("the image iterable is empty or exhausted")
        yield torch.stack(images)


def _device(module: nn.Module) -> torch.device:
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def optimizer_and_schedule(model: nn.Module, lr: float, steps: int, weight_decay: float):
    """AdamW (0.9, 0.99) with linear warmup (10% of the steps, at most 100), then cosine from
    ``lr`` down to ``lr / 10`` at the last step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    warmup = max(1, min(100, steps // 10))

    def lr_factor(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, steps))))
        return min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * cosine)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def train_autoencoder(model: Autoencoder, data, steps: int, batch_size: int = DEFAULT_BATCH_SIZE,
                      lr: float = DEFAULT_LR, seed: int = 0, progress: bool = True) -> dict:
    """Train ``model`` in place on images from ``data``; return its final metrics.

    ``data`` is a dataset (``len`` + ``[i]``) or a re-iterable of items, each a (C, H, W)
    tensor in [-1, 1] or a Document (its first image is used). AdamW with warmup and cosine
    decay to lr / 10 on the model's own loss (``training_loss``). Returned: "l1" and "mse" of
    the final model's deterministic reconstruction (in [-1, 1] space) of the last <= 256
    training images, the last step's logs, what ``finish_training`` reports, "seconds".
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    generator = torch.Generator().manual_seed(seed)
    device = _device(model)
    batches = _batches(data, batch_size, generator)
    optimizer, schedule = optimizer_and_schedule(model, lr, steps, weight_decay=model.weight_decay)

    model.train()
    last_batches = collections.deque(maxlen=max(1, 256 // batch_size))  # measured at the end
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"{type(model).__name__}", disable=not progress)
    for step in bar:
        pixels = next(batches).to(device)  # (B, C, H, W)
        last_batches.append(pixels)
        loss, logs = model.training_loss(pixels, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        model.after_step(step, steps, generator)
        if step % 20 == 0:
            bar.set_postfix({k: f"{float(v):.4g}" for k, v in logs.items()}, refresh=False)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pixels = torch.cat(list(last_batches))
        metrics = model.finish_training(pixels, batch_size)
        recon = torch.cat([model.decode(model.encode(chunk)) for chunk in pixels.split(batch_size)])
    last = {k: float(v) for k, v in logs.items() if k not in ("mse",)}
    return {**last, **metrics, "l1": (recon - pixels).abs().mean().item(),
            "mse": (recon - pixels).square().mean().item(), "seconds": seconds}
