"""Autoencoders on disk: one folder of ``autoencoder.safetensors`` + ``autoencoder.json``,
or a diffusers folder; and a fingerprint that says whether two encode alike."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from transfusion.autoencoders.base import Autoencoder, IdentityAutoencoder
from transfusion.autoencoders.kl import KLAutoencoder
from transfusion.autoencoders.pretrained import DIFFUSERS_CLASSES, DiffusersAutoencoder, diffusers_class
from transfusion.autoencoders.vq import VQAutoencoder
from transfusion.fileio import atomic_text, atomic_write
from transfusion.hub import AUTOENCODER_FILES, local_folder

WEIGHTS_FILE = "autoencoder.safetensors"
CONFIG_FILE = "autoencoder.json"
KINDS = {"identity": IdentityAutoencoder, "kl": KLAutoencoder, "vq": VQAutoencoder}


def save_autoencoder(ae: Autoencoder, folder: str | os.PathLike) -> None:
    """Write autoencoder.safetensors (weights) and autoencoder.json (config); nothing else is needed to load."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    atomic_text(folder / CONFIG_FILE, json.dumps(ae.config(), indent=2))


def load_autoencoder(spec: str | os.PathLike) -> Autoencoder:
    """"identity", a folder written by save_autoencoder, or a diffusers folder (config.json or vae/config.json),
    or the Hugging Face Hub repo id of one of those (``transfusion.hub``)."""
    if str(spec) == "identity":
        return IdentityAutoencoder()
    folder = local_folder(spec, AUTOENCODER_FILES)  # a Hub repo id (a diffusers AutoencoderKL / AutoencoderTiny) is read from its snapshot
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
    if kind == "diffusers":
        ae: Autoencoder = DiffusersAutoencoder(model=diffusers_class(config["class"]).from_config(config["diffusers_config"]))
    elif kind in KINDS:
        ae = KINDS[kind](**config)
    else:
        raise ValueError(f"{folder / CONFIG_FILE}: unknown autoencoder type {kind!r}")
    ae.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return ae.eval()


def autoencoder_fingerprint(ae: Autoencoder) -> str:
    """sha256 of the config and every weight: equal fingerprints encode identically."""
    digest = hashlib.sha256(json.dumps(ae.config(), sort_keys=True).encode())
    for name, tensor in sorted(ae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
