"""Self-describing, atomic checkpoints.

A checkpoint is a folder ``RUN/checkpoints/step_000250/`` holding

    model.safetensors     the weights, whole
    ema.safetensors       their exponential moving average (with train.ema_decay > 0)
    adapter_config.json   in place of model.safetensors for a LoRA run (train.lora.rank > 0):
    adapter_model.safetensors  the adapters alone, in peft's format, on the run that
                          train.init_from names (ema.safetensors: the adapters' average)
    config.yaml           the resolved config
    tokenizer.json        the tokenizer
    autoencoder/          the frozen autoencoder (absent for the identity)
    train_state/          weights, optimizer state and EMA as written by each training
                          process (torch.distributed.checkpoint): resumable on any number
                          of processes; inference never reads it
    state.json            step and bookkeeping (the data stream's position among them)

It is written (``train_state.save_checkpoint``) into a temporary sibling folder and renamed
into place once complete, so a crash or a full disk never leaves a readable-looking broken
checkpoint; loading needs no other file. This module reads checkpoints (for generation,
evaluation, sharing, fine-tuning) and imports nothing of distributed training;
``transfusion/train_state.py`` writes them and reads ``train_state/`` back to resume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from transfusion.autoencoders import Autoencoder, IdentityAutoencoder, load_autoencoder
from transfusion.config import Config, fields_of, from_dict, with_fields
from transfusion.hub import CHECKPOINT_FILES, local_folder
from transfusion.model.lora import CONFIG_FILE, WEIGHTS_FILE, base_name, is_adapter_weight, load_adapter, merge_lora
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


REQUIRED = ("config.yaml", "tokenizer.json", "state.json")
WEIGHTS = (("model.safetensors",), (CONFIG_FILE, WEIGHTS_FILE))  # whole weights, or a LoRA adapter


def has_weights(ckpt: Path) -> bool:
    return any(all((ckpt / name).is_file() for name in files) for files in WEIGHTS)


def is_adapter(ckpt: Path) -> bool:
    """A LoRA run's checkpoint: adapters on another checkpoint's weights."""
    return not (ckpt / "model.safetensors").is_file() and (ckpt / CONFIG_FILE).is_file()


def is_complete(ckpt: Path) -> bool:
    """Every file a checkpoint needs is there (a folder left half-deleted by a kill is not)."""
    if not (all((ckpt / name).is_file() for name in REQUIRED) and has_weights(ckpt)):
        return False
    return not (ckpt / "train_state").exists() or (ckpt / "train_state" / ".metadata").is_file()


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (temporary and incomplete folders are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()
             and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint), or the Hub repo id of a folder
    written by ``save_pretrained``, -> the checkpoint folder."""
    path = local_folder(path, CHECKPOINT_FILES, "checkpoint or run folder")
    if has_weights(path):
        return path
    for folder in (path / "checkpoints", path):
        found = list_checkpoints(folder)
        if found:
            return found[-1]
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint or run folder: {path}")
    raise FileNotFoundError(f"{path} holds no checkpoint (expected model.safetensors, a LoRA adapter or "
                            f"checkpoints/step_*)")


def read_weights(ckpt: Path, cfg: Config, device: str | torch.device = "cpu", ema: bool = False) -> dict:
    """A checkpoint's weights by name (the EMA's over them with ``ema``), a tied LM head restored;
    a LoRA run's: its adapters merged into its start's weights."""
    if is_adapter(ckpt):
        return load_checkpoint(ckpt, device, ema).model.state_dict()
    weights = load_file(ckpt / "model.safetensors", device=str(device))
    if ema:
        weights.update(load_file(ckpt / "ema.safetensors", device=str(device)))
    if cfg.model.tie_embeddings:  # saved once, as the embedding
        weights["lm_head.weight"] = weights["token_embed.weight"]
    return weights


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", ema: bool = False,
                    lora: str | Path | None = None) -> Loaded:
    """Rebuild model, tokenizer and autoencoder from a checkpoint (or a run's latest one);
    with ``ema`` the model holds the moving average of the weights. ``lora``: a LoRA adapter
    (peft's folder, or a LoRA run or checkpoint) merged into these weights (its EMA with ``ema``)."""
    if lora:
        loaded = load_checkpoint(path, device)
        folder = adapter_folder(lora)
        load_adapter(loaded.model, folder, weights="ema.safetensors" if ema else WEIGHTS_FILE)
        merge_lora(loaded.model).eval()
        return loaded
    ckpt = resolve_checkpoint(path)
    for name in REQUIRED:
        if not (ckpt / name).is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} is incomplete: {name} is missing")
    cfg = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
    tokenizer = tokenizer_from_json((ckpt / "tokenizer.json").read_text())
    autoencoder = load_autoencoder(ckpt / "autoencoder") if (ckpt / "autoencoder").is_dir() else IdentityAutoencoder()
    if ema and not (ckpt / "ema.safetensors").is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} holds no EMA weights (trained with train.ema_decay=0)")
    if is_adapter(ckpt):
        model = adapted_model(ckpt, cfg, tokenizer, autoencoder, device, ema)
    else:
        model = Transfusion.build(cfg.model, cfg.image, tokenizer, autoencoder)
        try:
            model.load_state_dict(read_weights(ckpt, cfg, device, ema))
        except Exception as err:
            raise ValueError(f"checkpoint {ckpt}: weights do not match its config.yaml ({err})") from err
    model.to(device).eval()
    step = json.loads((ckpt / "state.json").read_text())["step"]
    return Loaded(model, tokenizer, autoencoder.to(device).eval(), cfg, step, ckpt)


def adapter_folder(path: str | Path) -> Path:
    """A LoRA adapter's folder: peft's own (``adapter_config.json`` there), or a LoRA run's
    checkpoint (a run folder: its latest)."""
    folder = local_folder(path, CHECKPOINT_FILES, "LoRA adapter folder")
    if (folder / CONFIG_FILE).is_file():
        return folder
    ckpt = resolve_checkpoint(folder)
    if not is_adapter(ckpt):
        raise ValueError(f"{path} holds no LoRA adapter ({CONFIG_FILE}): it is a checkpoint of whole weights")
    return ckpt


def adapted_model(ckpt: Path, cfg: Config, tokenizer: Tokenizer, autoencoder: Autoencoder,
                  device: str | torch.device = "cpu", ema: bool = False) -> Transfusion:
    """A LoRA run's model: its start (``train.init_from``, read as it is there; or a pretrained
    language model, ``model.init_from``, with the image layers the run trained in full) with the
    checkpoint's adapters (their EMA with ``ema``) merged in."""
    start = cfg.train.init_from or cfg.model.init_from
    if not start:
        raise ValueError(f"checkpoint {ckpt} holds LoRA adapters but names no start (train.init_from) to adapt")
    try:
        if cfg.train.init_from:
            base = load_checkpoint(start, device).model
        else:  # as the run began: every weight initialised by name, then the language model's
            from transfusion.hf import load_text_weights

            base = Transfusion.build(cfg.model, cfg.image, tokenizer, autoencoder, cfg.train.seed)
            load_text_weights(base, start, tokenizer.new_ids)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"checkpoint {ckpt} holds LoRA adapters on {start}, which cannot be read ({err}); "
                                f"put it back, or merge the adapters where it is (`transfusion merge-lora`)") from None
    load_adapter(base, ckpt, weights="ema.safetensors" if ema else WEIGHTS_FILE)
    return merge_lora(base).to(device)


# the diffusion fields that define what a model predicts: a fine-tuned run keeps its start's
def with_start_fields(cfg: Config) -> Config:
    """``cfg`` for a run that starts from ``train.init_from`` (a run or checkpoint folder): the
    start's architecture fields (``config.fields_of(.., "architecture")``: ``model.*`` but how attention
    is computed, ``image.*``, ``autoencoder.*``, the diffusion process) replace the run's, and its
    tokenizer and autoencoder are the run's (read from the checkpoint folder, never retrained)."""
    if not cfg.train.init_from:
        return cfg
    ckpt = resolve_checkpoint(cfg.train.init_from).resolve()  # absolute: a run resumes however its start is spelled
    start = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
    fields = fields_of(start, "architecture")
    fields["autoencoder"]["name"] = str(ckpt / "autoencoder") if (ckpt / "autoencoder").is_dir() else "identity"
    # the edit reference may be added at fine-tuning: its layer starts at zero (load_start_weights)
    fields["image"]["edit_reference"] = start.image.edit_reference or cfg.image.edit_reference
    fields["data"] = {"tokenizer": str(ckpt / "tokenizer.json")}
    fields["train"] = {"init_from": str(ckpt)}
    return with_fields(cfg, fields)


def load_start_weights(model: Transfusion, path: str | Path, assign=None) -> None:
    """Write a checkpoint's weights into ``model`` (built with ``with_start_fields``);
    ``assign(param, whole_value)`` writes each (``distributed.assign_shard`` for sharded weights)."""
    ckpt = resolve_checkpoint(path)
    weights = read_weights(ckpt, from_dict(yaml.safe_load((ckpt / "config.yaml").read_text())))
    assign = assign or (lambda param, value: param.copy_(value))
    own = {base_name(k): v for k, v in model.state_dict(keep_vars=True).items() if not is_adapter_weight(k)}
    added = {k for k in own.keys() - weights.keys() if ".reference_in." in k}  # image.edit_reference, new here
    own = {k: v for k, v in own.items() if k not in added}
    if own.keys() != weights.keys():
        missing, extra = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())
        raise ValueError(f"checkpoint {ckpt} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, tensor in own.items():
            if tensor.shape != weights[name].shape:
                raise ValueError(f"checkpoint {ckpt}: {name} is {tuple(weights[name].shape)} there, "
                                 f"{tuple(tensor.shape)} here")
            assign(tensor, weights[name].to(tensor.dtype))
