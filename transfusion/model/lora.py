"""Low-rank adapters on a Transfusion model, through peft (LoRA: Hu et al. 2021, arXiv 2106.09685).

    add_lora(model, cfg.train.lora)              # adapters in place; every other weight frozen
    write_adapter(model.state_dict(), model.lora_config, folder)
    load_adapter(model, folder)                  # a saved adapter on a base model
    merge_lora(model)                            # the adapters folded into the base weights

A layer ``W`` with an adapter computes ``W x + (alpha / rank) B A x``: ``A`` (rank x in) starts
random, ``B`` (out x rank) at zero, so a model with fresh adapters computes exactly what its base
does. The folder holds peft's own files (``adapter_config.json``, ``adapter_model.safetensors``):
``peft.PeftModel.from_pretrained(base_model, folder)`` reads them too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from transfusion.config import LoraConfig

ADAPTER = "default"  # peft's name for a model's one adapter
PEFT_PREFIX = "base_model.model."  # how peft names a wrapped model's weights in adapter_model.safetensors
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


def _peft():
    try:
        import peft
    except ImportError as err:
        raise ValueError(f"LoRA needs peft: pip install -e \".[lora]\" ({err})") from None
    return peft


def target_modules(settings: LoraConfig, model: nn.Module) -> list[str]:
    """The names of the layers ``settings`` puts an adapter on: the trunk's attention (q/k/v,
    output) and MLP projections (under ``model.mot`` the copy ``settings.modality`` picks), and
    the image layers' linear and convolution layers."""
    mot = model.model_cfg.mot
    copies = {"both": ("text", "image"), "text": ("text",), "image": ("image",)}[settings.modality]
    wanted = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if parts[0] == "trunk" and isinstance(module, nn.Linear):
            copy = next((p for p in parts if p in ("text", "image")), None)
            if mot and copy not in copies:
                continue
            if ("attention" in settings.modules and parts[3] == "attn") or ("mlp" in settings.modules and
                                                                            parts[3] == "mlp"):
                wanted.append(name)
        elif parts[0] == "image" and "image" in settings.modules and isinstance(module, (nn.Linear, nn.Conv2d)):
            wanted.append(name)
    if not wanted:
        raise ValueError(f"train.lora.modules={settings.modules} names no layer of this model "
                         f"(image layers: {model.image is not None}, mot: {mot})")
    return wanted


def peft_config(settings: LoraConfig, model: nn.Module, base: str = "", train_fully: tuple[str, ...] = ()):
    """peft's ``LoraConfig`` for ``settings`` on ``model``; ``base``: what the adapter adapts (a run,
    a checkpoint or a language model folder), kept as its ``base_model_name_or_path``;
    ``train_fully``: top-level modules that train in full beside the adapters (peft's ``modules_to_save``:
    the image layers of a pretrained language model's start, which start untrained)."""
    targets = [n for n in target_modules(settings, model) if not any(n.startswith(f"{m}.") for m in train_fully)]
    if not targets:
        raise ValueError(f"train.lora.modules={settings.modules} names only layers that train in full here")
    return _peft().LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                              target_modules=targets, base_model_name_or_path=base or None,
                              modules_to_save=list(train_fully) or None)


def add_lora(model: nn.Module, settings: LoraConfig, base: str = "", config=None,
             train_fully: tuple[str, ...] = ()) -> nn.Module:
    """Adapters on ``model``'s layers (in place; on the meta device too): only they (and the
    modules of ``train_fully``) train. ``config``: a peft ``LoraConfig`` to use as it is (a saved
    adapter's), else one made from ``settings``.

    A module to save trains as it is, in place: peft would wrap it in a copy, which only its
    ``forward`` reaches (the image layers are entered by ``encode`` and ``decode``); the files
    name its weights as peft does, so peft loads them into its copy."""
    import copy

    peft = _peft()
    config = config if config is not None else peft_config(settings, model, base, train_fully)
    injected = copy.copy(config)
    injected.modules_to_save = None
    peft.inject_adapter_in_model(injected, model, adapter_name=ADAPTER)
    for name in config.modules_to_save or ():
        model.get_submodule(name).requires_grad_(True)
    model.lora_config = config
    return model


def has_lora(model: nn.Module) -> bool:
    return getattr(model, "lora_config", None) is not None


def is_adapter_weight(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def base_name(name: str) -> str:
    """A weight's name in the model without adapters (``...qkv.base_layer.weight`` -> ``...qkv.weight``)."""
    return name.replace(".base_layer.", ".")


def saved_with_adapter(name: str, config) -> bool:
    """The weight is in the adapter's files: an adapter's, or one of a module trained in full."""
    return is_adapter_weight(name) or any(name.startswith(f"{m}.") for m in config.modules_to_save or ())


def adapter_weights(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The weights of a (whole) state dict that the adapter's files hold, under peft's names."""
    return {PEFT_PREFIX + name.replace(f".{ADAPTER}.", "."): value for name, value in state.items()
            if saved_with_adapter(name, config)}


def write_adapter(state: dict[str, torch.Tensor], config, folder: str | Path) -> None:
    """``adapter_config.json`` and ``adapter_model.safetensors`` (the weights of ``state``, a whole
    state dict, that ``adapter_weights`` picks) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    save_file({k: v.detach().cpu().contiguous() for k, v in adapter_weights(state, config).items()},
              folder / WEIGHTS_FILE, metadata={"format": "pt"})


def read_adapter_config(folder: str | Path):
    """A saved adapter's peft ``LoraConfig`` (JSON; a folder without one is an error that names it)."""
    peft = _peft()
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no LoRA adapter ({CONFIG_FILE} is missing)")
    try:
        fields = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if fields.get("peft_type") != "LORA":
        raise ValueError(f"{path} describes a {fields.get('peft_type')} adapter; only LoRA adapters load here")
    return peft.LoraConfig.from_pretrained(str(folder))


def load_adapter(model: nn.Module, folder: str | Path, weights: str = WEIGHTS_FILE) -> nn.Module:
    """The adapter saved in ``folder`` added to ``model`` (its base), its weights loaded from
    ``weights`` there (a training run's checkpoint also holds their EMA, ``ema.safetensors``)."""
    config = read_adapter_config(folder)
    path = Path(folder) / weights
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no adapter weights ({weights} is missing)")
    saved = load_file(path)
    try:
        add_lora(model, LoraConfig(), config=config)
    except ValueError as err:  # peft: a target module this model lacks
        raise ValueError(f"the adapter in {folder} does not fit this model ({err})") from None
    own = {name: p for name, p in model.named_parameters() if saved_with_adapter(name, config)}
    wanted = {PEFT_PREFIX + name.replace(f".{ADAPTER}.", "."): name for name in own}
    if wanted.keys() != saved.keys():
        missing, extra = sorted(wanted.keys() - saved.keys()), sorted(saved.keys() - wanted.keys())
        raise ValueError(f"the adapter in {folder} does not fit this model: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    with torch.no_grad():
        for key, name in wanted.items():
            if own[name].shape != saved[key].shape:
                raise ValueError(f"the adapter in {folder} does not fit this model: {key} is "
                                 f"{tuple(saved[key].shape)} there, {tuple(own[name].shape)} here")
            own[name].copy_(saved[key])
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """``model`` with each adapter folded into its layer's weight and the layer put back in place
    (in place): the weights then carry the names of a model without adapters."""
    from peft.tuners.lora import LoraLayer

    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name, layer in layers:
        layer.merge(adapter_names=[ADAPTER])
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    model.lora_config = None
    return model
