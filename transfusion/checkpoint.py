"""Self-describing, atomic checkpoints.

A checkpoint is a folder ``RUN/checkpoints/step_000250/`` holding

    model.safetensors     the weights
    config.yaml           the resolved config
    tokenizer.json        the tokenizer
    autoencoder/          the frozen autoencoder (absent for the identity)
    optimizer.pt          optimizer state (training only; inference never reads it)
    state.json            step and bookkeeping

It is written into a temporary sibling folder and renamed into place once complete, so a
crash or a full disk never leaves a readable-looking broken checkpoint; loading needs no
other file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from transfusion.autoencoder import Autoencoder, IdentityAutoencoder, load_autoencoder, save_autoencoder
from transfusion.config import Config, from_dict, to_dict
from transfusion.model.transfusion import Transfusion
from transfusion.tokenizer import Tokenizer, tokenizer_from_json

PREFIX = "step_"


@dataclass
class Loaded:
    model: Transfusion
    tokenizer: Tokenizer
    autoencoder: Autoencoder
    config: Config
    step: int
    path: Path


def save_checkpoint(
    folder: str | Path,
    step: int,
    model: Transfusion,
    tokenizer: Tokenizer,
    autoencoder: Autoencoder,
    optimizer: torch.optim.Optimizer | None = None,
    extra_state: dict | None = None,
    keep: int = 0,
) -> Path:
    """Write ``folder/step_{step:06d}`` atomically; keep only the newest ``keep`` (0: all)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=folder))
    try:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors")
        (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(model.cfg), sort_keys=False))
        (tmp / "tokenizer.json").write_text(tokenizer.to_json())
        if not isinstance(autoencoder, IdentityAutoencoder):
            save_autoencoder(autoencoder, tmp / "autoencoder")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **(extra_state or {})}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (temporary folders are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint), -> the checkpoint folder."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    for folder in (path / "checkpoints", path):
        found = list_checkpoints(folder)
        if found:
            return found[-1]
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint or run folder: {path}")
    raise FileNotFoundError(f"{path} holds no checkpoint (expected model.safetensors or checkpoints/step_*)")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """Rebuild model, tokenizer and autoencoder from a checkpoint (or a run's latest one)."""
    ckpt = resolve_checkpoint(path)
    for name in ("model.safetensors", "config.yaml", "tokenizer.json", "state.json"):
        if not (ckpt / name).is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} is incomplete: {name} is missing")
    cfg = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
    tokenizer = tokenizer_from_json((ckpt / "tokenizer.json").read_text())
    autoencoder = load_autoencoder(ckpt / "autoencoder") if (ckpt / "autoencoder").is_dir() else IdentityAutoencoder()
    model = Transfusion.build(cfg, tokenizer, autoencoder)
    try:
        model.load_state_dict(load_file(ckpt / "model.safetensors", device=str(device)))
    except Exception as err:
        raise ValueError(f"checkpoint {ckpt}: weights do not match its config.yaml ({err})") from err
    model.to(device).eval()
    step = json.loads((ckpt / "state.json").read_text())["step"]
    return Loaded(model, tokenizer, autoencoder.to(device).eval(), cfg, step, ckpt)
