"""Frozen autoencoders that turn images into the latents the transformer diffuses.

Images are float tensors (B, 3, H, W) in [-1, 1]; an autoencoder with downsample factor
f and C latent channels maps them to latents (B, C, H/f, W/f) and back:

    ae = load_autoencoder("identity")         # latents are the pixels (f = 1)
    ae = load_autoencoder("runs/ae")          # a folder written by save_autoencoder
    ae = load_autoencoder("path/to/sd-vae")   # a diffusers AutoencoderKL / AutoencoderTiny folder
    z = ae.encode(pixels)                     # deterministic, latents of ~unit std
    pixels = ae.decode(z)                     # clamped to [-1, 1]

Three kinds: ``IdentityAutoencoder``; ``KLAutoencoder``, a small convolutional KL-VAE
trained here in minutes on CPU (``train_autoencoder`` or ``transfusion autoencoder
train``); ``DiffusersAutoencoder``, a pretrained diffusers model. ``cache_latents``
encodes a dataset once and keeps the latents on disk, keyed to the autoencoder's weights.
"""

from __future__ import annotations

import abc
import argparse
import collections
import hashlib
import itertools
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image as PILImage
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

WEIGHTS_FILE = "autoencoder.safetensors"
CONFIG_FILE = "autoencoder.json"
DIFFUSERS_CLASSES = ("AutoencoderKL", "AutoencoderTiny")
# `transfusion autoencoder train` defaults: ~80 s on 2 idle CPU cores, test MSE ~0.007 on 32 px shapes
DEFAULT_STEPS, DEFAULT_BATCH_SIZE, DEFAULT_LR = 1000, 16, 2e-3


class Autoencoder(nn.Module, abc.ABC):
    """Base class: ``channels`` image channels <-> ``latent_channels`` at 1/``downsample`` size."""

    channels: int
    latent_channels: int
    downsample: int

    @abc.abstractmethod
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, channels, H, W) in [-1, 1] -> latents (B, latent_channels, H/f, W/f)."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, latent_channels, h, w) -> pixels (B, channels, h*f, w*f) clamped to [-1, 1]."""

    @abc.abstractmethod
    def config(self) -> dict:
        """JSON-able dict with "type" and what else rebuilds this autoencoder (see save_autoencoder)."""

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents of an image of height x width pixels."""
        f = self.downsample
        if height % f or width % f:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the autoencoder's "
                f"downsample factor {f}; use sizes that are multiples of {f}"
            )
        return self.latent_channels, height // f, width // f

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if pixels.ndim != 4 or pixels.shape[1] != self.channels:
            raise ValueError(f"expected pixels (B, {self.channels}, H, W), got {tuple(pixels.shape)}")
        self.latent_shape(pixels.shape[2], pixels.shape[3])

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B, {self.latent_channels}, h, w), got {tuple(latents.shape)}")


class IdentityAutoencoder(Autoencoder):
    """Latents are the pixels: diffusion in pixel space."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.channels = self.latent_channels = channels
        self.downsample = 1

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self._check_pixels(pixels)
        return pixels

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        return latents.clamp(-1, 1)

    def config(self) -> dict:
        return {"type": "identity", "channels": self.channels}


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a (1x1-projected when widths differ) skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2, self.conv2 = _norm(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _upsample(in_channels: int, out_channels: int) -> nn.Module:
    """Nearest x2 then a 3x3 conv (no checkerboard artefacts, unlike transposed convs)."""
    return nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(in_channels, out_channels, 3, padding=1))


def _widths(downsample: int, width: int) -> list[int]:
    """Channels at 1, 1/2, 1/4 ... size: doubling at every halving, at most 4 * width."""
    if downsample < 1 or downsample & (downsample - 1):
        raise ValueError(f"downsample must be a power of two (1, 2, 4, 8, ...), got {downsample}")
    return [width * min(2**i, 4) for i in range(downsample.bit_length())]


def conv_encoder(channels: int, out_channels: int, downsample: int, width: int) -> nn.Sequential:
    """Conv, then per halving a ResBlock and a stride-2 conv, a ResBlock at the bottom,
    then GroupNorm-SiLU-conv to ``out_channels``."""
    widths = _widths(downsample, width)
    layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1)]
    for i in range(len(widths) - 1):
        layers += [ResBlock(widths[i], widths[i]), nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)]
    layers += [ResBlock(widths[-1], widths[-1]), _norm(widths[-1]), nn.SiLU(),
               nn.Conv2d(widths[-1], out_channels, 3, padding=1)]
    return nn.Sequential(*layers)


def conv_decoder(latent_channels: int, channels: int, downsample: int, width: int) -> nn.Sequential:
    """The mirror of ``conv_encoder``, with nearest-upsample + conv in place of strided convs."""
    widths = _widths(downsample, width)
    layers: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1), ResBlock(widths[-1], widths[-1])]
    for i in reversed(range(len(widths) - 1)):
        layers += [_upsample(widths[i + 1], widths[i]), ResBlock(widths[i], widths[i])]
    layers += [_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], channels, 3, padding=1)]
    return nn.Sequential(*layers)


class KLAutoencoder(Autoencoder):
    """A small convolutional KL autoencoder (250k parameters at the default width 16, f = 4).

    Encoder: conv, then per halving a ResBlock and a stride-2 conv, a ResBlock at the
    bottom, then GroupNorm-SiLU-conv to (mean, logvar). The decoder mirrors it with
    nearest-upsample + conv. Channels double at every halving, at most to 4 * width.
    ``scale`` multiplies the posterior mean in ``encode`` so that latents have ~unit std;
    ``train_autoencoder`` sets it, and it is saved with the weights.
    """

    def __init__(self, channels: int = 3, latent_channels: int = 4, downsample: int = 4,
                 width: int = 16, scale: float = 1.0):
        super().__init__()
        self.channels, self.latent_channels = channels, latent_channels
        self.downsample, self.width = downsample, width
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.encoder = conv_encoder(channels, 2 * latent_channels, downsample, width)
        self.decoder = conv_decoder(latent_channels, channels, downsample, width)

    def moments(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, channels, H, W) -> unscaled posterior mean and logvar, each (B, C, H/f, W/f)."""
        mean, logvar = self.encoder(pixels).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self._check_pixels(pixels)
        return self.moments(pixels)[0] * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        return self.decoder(latents / self.scale).clamp(-1, 1)

    def config(self) -> dict:
        return {"type": "kl", "channels": self.channels, "latent_channels": self.latent_channels,
                "downsample": self.downsample, "width": self.width, "scale": float(self.scale)}


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
        self.model = _load_diffusers(str(path_or_hub_name), subfolder) if model is None else model
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
        self._check_pixels(pixels)
        out = self.model.encode(pixels.to(self.model.dtype))  # the model may be half precision
        raw = out.latents if self.kind == "AutoencoderTiny" else out.latent_dist.mean
        return ((raw - self.shift_factor) * self.scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        raw = (latents / self.scaling_factor + self.shift_factor).to(self.model.dtype)
        return self.model.decode(raw).sample.float().clamp(-1, 1)

    def config(self) -> dict:
        return {"type": "diffusers", "class": self.kind, "diffusers_config": dict(self.model.config)}


def _diffusers_class(name: str) -> type:
    import diffusers  # imported lazily: only this class needs it

    if name not in DIFFUSERS_CLASSES:
        raise ValueError(f"diffusers class {name!r} is not supported; expected one of {DIFFUSERS_CLASSES}")
    return getattr(diffusers, name)


def _load_diffusers(path_or_hub_name: str, subfolder: str | None) -> nn.Module:
    from diffusers import AutoencoderKL

    where = path_or_hub_name + (f" (subfolder {subfolder!r})" if subfolder else "")
    try:
        class_name = AutoencoderKL.load_config(path_or_hub_name, subfolder=subfolder).get("_class_name")
        return _diffusers_class(class_name).from_pretrained(path_or_hub_name, subfolder=subfolder)
    except (OSError, ValueError) as error:  # what diffusers raises for missing, unreachable or malformed models
        raise FileNotFoundError(
            f"could not find or load a diffusers autoencoder at {where}. Give a local folder holding "
            "its config.json and weights; without internet, hub names only work when already in the "
            f"Hugging Face cache. diffusers said: {error}"
        ) from error


def _atomic_write(path: Path, write) -> None:
    """Call write(tmp) then rename tmp onto path, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_autoencoder(ae: Autoencoder, folder: str | os.PathLike) -> None:
    """Write autoencoder.safetensors (weights) and autoencoder.json (config); nothing else is needed to load."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}
    _atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    text = json.dumps(ae.config(), indent=2)
    _atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(text))


def load_autoencoder(spec: str | os.PathLike) -> Autoencoder:
    """"identity", a folder written by save_autoencoder, or a diffusers folder (config.json or vae/config.json)."""
    if str(spec) == "identity":
        return IdentityAutoencoder()
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"autoencoder {str(spec)!r} not found: give 'identity', a folder written by save_autoencoder, "
            "or a local diffusers AutoencoderKL/AutoencoderTiny folder"
        )
    if (folder / CONFIG_FILE).is_file():
        return _load_saved(folder)
    for subfolder in (None, "vae"):
        config_path = folder / (subfolder or "") / "config.json"
        if config_path.is_file() and json.loads(config_path.read_text()).get("_class_name") in DIFFUSERS_CLASSES:
            return DiffusersAutoencoder(folder, subfolder=subfolder)
    raise ValueError(
        f"{folder} holds neither {CONFIG_FILE} nor a diffusers config.json whose _class_name is one of "
        f"{DIFFUSERS_CLASSES}"
    )


def _load_saved(folder: Path) -> Autoencoder:
    config = json.loads((folder / CONFIG_FILE).read_text())
    kind = config.pop("type", None)
    if kind == "identity":
        ae: Autoencoder = IdentityAutoencoder(**config)
    elif kind == "kl":
        ae = KLAutoencoder(**config)
    elif kind == "vq":
        from transfusion.vq import VQAutoencoder

        ae = VQAutoencoder(**config)
    elif kind == "diffusers":
        ae = DiffusersAutoencoder(model=_diffusers_class(config["class"]).from_config(config["diffusers_config"]))
    else:
        raise ValueError(f"{folder / CONFIG_FILE}: unknown autoencoder type {kind!r}")
    ae.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return ae.eval()


def _image_of(item) -> torch.Tensor:
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
            yield torch.stack([_image_of(data[i]) for i in indices])
    iterator = iter(data)
    while True:
        images = [_image_of(item) for item in itertools.islice(iterator, batch_size)]
        if not images:  # end of a pass: start the next one (a one-shot iterator stays empty)
            iterator = iter(data)
            images = [_image_of(item) for item in itertools.islice(iterator, batch_size)]
        if not images:
            raise ValueError("the image iterable is empty or exhausted")
        yield torch.stack(images)


def _device(module: nn.Module) -> torch.device:
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def optimizer_and_schedule(model: nn.Module, lr: float, steps: int, weight_decay: float):
    """AdamW (0.9, 0.99) with linear warmup (10% of the steps, at most 100), then cosine from
    ``lr`` down to ``lr / 10`` at the last step: how every autoencoder here is trained."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    warmup = max(1, min(100, steps // 10))

    def lr_factor(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, steps))))
        return min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * cosine)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def train_autoencoder(model: KLAutoencoder, data, steps: int, batch_size: int, lr: float = DEFAULT_LR,
                      kl_weight: float = 1e-6, seed: int = 0, progress: bool = True) -> dict:
    """Train ``model`` in place on images from ``data``; set its ``scale``; return final metrics.

    ``data`` is a dataset (``len`` + ``[i]``) or a re-iterable of items, each a (C, H, W)
    tensor in [-1, 1] or a Document (its first image is used). Loss per batch: L1 + MSE of
    the reconstruction of a posterior sample + ``kl_weight`` * KL (summed over latent
    elements, mean over images). AdamW with warmup and cosine decay to lr / 10.
    Returned: "l1" and "mse" of the final model's deterministic reconstruction (in [-1, 1]
    space) of the last <= 256 training images, "kl" of the last step, "scale", "seconds".
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    generator = torch.Generator().manual_seed(seed)
    device = _device(model)
    batches = _batches(data, batch_size, generator)
    optimizer, schedule = optimizer_and_schedule(model, lr, steps, weight_decay=0.01)

    model.train()
    last_batches = collections.deque(maxlen=max(1, 256 // batch_size))  # measured at the end
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="autoencoder", disable=not progress)
    for step in bar:
        pixels = next(batches).to(device)  # (B, C, H, W)
        last_batches.append(pixels)
        mean, logvar = model.moments(pixels)  # (B, C_lat, h, w) each
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator).to(device)
        recon = model.decoder(z)
        l1, mse = (recon - pixels).abs().mean(), (recon - pixels).square().mean()
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        loss = l1 + mse + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 20 == 0:
            bar.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.1f}", refresh=False)
    seconds = time.perf_counter() - start
    model.eval()

    # scale so encode() gives latents of unit std, as the diffusion noise schedule assumes
    with torch.no_grad():
        pixels = torch.cat(list(last_batches))
        means = torch.cat([model.moments(chunk)[0] for chunk in pixels.split(batch_size)])
        model.scale.fill_(1.0 / means.std().clamp_min(1e-6).item())
        recon = torch.cat([model.decoder(chunk).clamp(-1, 1) for chunk in means.split(batch_size)])
    return {"l1": (recon - pixels).abs().mean().item(), "mse": (recon - pixels).square().mean().item(),
            "kl": kl.item(), "scale": float(model.scale), "seconds": seconds}


def autoencoder_fingerprint(ae: Autoencoder) -> str:
    """sha256 of the config and every weight: equal fingerprints encode identically."""
    digest = hashlib.sha256(json.dumps(ae.config(), sort_keys=True).encode())
    for name, tensor in sorted(ae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def cache_latents(ae: Autoencoder, dataset, path: str | os.PathLike, batch_size: int = 64) -> torch.Tensor:
    """Latents (N, C, h, w) of every image of ``dataset``, encoded once and kept in ``path``.

    ``path`` is a .safetensors file whose metadata records the autoencoder fingerprint, N
    and a hash of the first and last images; a file made with another autoencoder or
    dataset is recomputed and overwritten, never silently used.
    """
    if len(dataset) == 0:
        raise ValueError("cannot cache the latents of an empty dataset")
    path = Path(path)
    ends = hashlib.sha256()
    for i in (0, len(dataset) - 1):
        ends.update(_image_of(dataset[i]).float().cpu().contiguous().numpy().tobytes())
    key = {"autoencoder": autoencoder_fingerprint(ae), "n": str(len(dataset)), "images": ends.hexdigest()}
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if f.metadata() == key:
                return f.get_tensor("latents")
        print(f"latent cache {path} was made for another autoencoder or dataset: recomputing")

    device, chunks = _device(ae), []
    for start in tqdm(range(0, len(dataset), batch_size), desc=f"caching latents in {path.name}"):
        indices = range(start, min(start + batch_size, len(dataset)))
        pixels = torch.stack([_image_of(dataset[i]) for i in indices]).to(device)  # (B, C, H, W)
        chunks.append(ae.encode(pixels).float().cpu())
    latents = torch.cat(chunks)  # (N, C, h, w)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: save_file({"latents": latents.contiguous()}, str(tmp), metadata=key))
    return latents


def save_reconstructions(pixels: torch.Tensor, recon: torch.Tensor, path: str | os.PathLike) -> None:
    """PNG of (B, C, H, W) originals on the top row and their reconstructions below, zoomed."""
    rows = torch.cat([torch.cat(list(pixels), dim=2), torch.cat(list(recon), dim=2)], dim=1)  # (C, 2H, B*W)
    rows = rows.expand(3, -1, -1) if rows.shape[0] == 1 else rows
    grid = ((rows.cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()  # (2H, B*W, 3)
    zoom = max(1, 128 // pixels.shape[-1])  # 32 px images are too small to judge
    picture = PILImage.fromarray(grid)
    picture.resize((picture.width * zoom, picture.height * zoom), PILImage.Resampling.NEAREST).save(path)


def _image_dataset(name: str, split: str, size: int):
    if name == "shapes":
        from transfusion.data.shapes import ShapesDataset

        return ShapesDataset(split, size=size)
    from transfusion.data.mnist import MnistDataset

    return MnistDataset(split, size=size)


def cli_train(argv: list[str]) -> None:
    """`transfusion autoencoder train`: train a KL (or, with --vq, a VQ) autoencoder, save it,
    print and draw its reconstructions."""
    parser = argparse.ArgumentParser(prog="transfusion autoencoder train", description=cli_train.__doc__)
    parser.add_argument("--data", choices=("shapes", "mnist"), default="shapes")
    parser.add_argument("--out", required=True, help="folder for autoencoder.safetensors/.json and reconstructions.png")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--latent-channels", type=int, default=None,
                        help="latent channels (KL, default 4) or code vector size (VQ, default 8)")
    parser.add_argument("--vq", action="store_true", help="a VQ autoencoder: discrete codes (the Chameleon baseline)")
    parser.add_argument("--codebook-size", type=int, default=512, help="VQ codebook entries")
    parser.add_argument("--downsample", type=int, default=4)
    parser.add_argument("--width", type=int, default=16, help="channels at full resolution")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    train_data, test_data = _image_dataset(args.data, "train", args.size), _image_dataset(args.data, "test", args.size)
    channels = _image_of(train_data[0]).shape[0]
    if args.vq:
        from transfusion.vq import DEFAULT_CODE_DIM, VQAutoencoder, train_vq

        model: Autoencoder = VQAutoencoder(channels, args.codebook_size, args.latent_channels or DEFAULT_CODE_DIM,
                                           args.downsample, args.width)
        model.latent_shape(args.size, args.size)
        metrics = train_vq(model, train_data, args.steps, args.batch_size, lr=args.lr, seed=args.seed)
        extra = f"codebook: {metrics['usage']:.0%} of {args.codebook_size} codes used, perplexity {metrics['perplexity']:.0f}"
    else:
        model = KLAutoencoder(channels=channels, latent_channels=args.latent_channels or 4,
                              downsample=args.downsample, width=args.width)
        model.latent_shape(args.size, args.size)  # fail before training on an impossible size
        metrics = train_autoencoder(model, train_data, args.steps, args.batch_size, lr=args.lr, seed=args.seed)
        extra = f"latent scale {metrics['scale']:.3f}"
    save_autoencoder(model, args.out)

    pixels = torch.stack([_image_of(test_data[i]) for i in range(min(256, len(test_data)))])  # (N, C, H, W)
    recon = model.decode(model.encode(pixels))
    save_reconstructions(pixels[:8], recon[:8], Path(args.out) / "reconstructions.png")
    print(f"trained {args.steps} steps in {metrics['seconds']:.0f}s; {extra}\n"
          f"train reconstruction: mse {metrics['mse']:.4f}  l1 {metrics['l1']:.4f}\n"
          f"test reconstruction:  mse {(recon - pixels).square().mean():.4f}  "
          f"l1 {(recon - pixels).abs().mean():.4f}  ({len(pixels)} images)\n"
          f"saved the autoencoder and reconstructions.png in {args.out}")
