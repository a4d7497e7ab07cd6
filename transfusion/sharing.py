"""Sharing checkpoints the Hugging Face way: ``save_pretrained``, ``from_pretrained``, ``push_to_hub``.

    save_pretrained("runs/tiny", "out/tiny")              # the inference files + a model card
    push_to_hub("runs/tiny", "me/transfusion-tiny")       # the same folder, uploaded with huggingface_hub
    run = from_pretrained("me/transfusion-tiny")          # a Loaded (model, tokenizer, autoencoder, config)

A saved folder is a checkpoint without its training state: model.safetensors (and
ema.safetensors), config.yaml, tokenizer.json, autoencoder/, state.json and README.md, the
model card the Hub shows. Anything that takes a checkpoint takes its repo id too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transfusion.card import model_card
from transfusion.checkpoint import Loaded, load_checkpoint, resolve_checkpoint
from transfusion.fileio import atomic_folder, check_export_target
from transfusion.model.lora import CONFIG_FILE, WEIGHTS_FILE
from transfusion.train_state import untied_weights

INFERENCE_FILES = ("model.safetensors", "ema.safetensors", CONFIG_FILE, WEIGHTS_FILE, "config.yaml", "tokenizer.json",
                   "state.json")  # a LoRA run's: its adapters, on the start its config.yaml names
SAVED_NAMES = {*INFERENCE_FILES, "README.md", "autoencoder", "eval"}  # all that save_pretrained writes


def latest_report(ckpt: Path) -> dict | None:
    """The checkpoint's own evaluation (``eval/report.json``), else its run's end-of-training report
    when that was made at this checkpoint's step."""
    own = ckpt / "eval" / "report.json"
    if own.is_file():
        return json.loads(own.read_text())
    run = ckpt.parent.parent / "report.json"
    step = json.loads((ckpt / "state.json").read_text())["step"]
    if run.is_file() and json.loads(run.read_text()).get("step") == step:
        return json.loads(run.read_text())
    return None


def save_pretrained(source: str | Path, folder: str | Path, repo_id: str | None = None,
                    overwrite: bool = False) -> Path:
    """Write the checkpoint ``source`` (a run, a checkpoint folder or a repo id) into ``folder``,
    with a model card; atomic (a crash leaves no half-written folder). ``folder`` must be new,
    empty or an earlier ``save_pretrained`` folder (``overwrite``: any folder but a run's)."""
    ckpt = resolve_checkpoint(source)
    folder = check_export_target(folder, "save-pretrained", SAVED_NAMES, overwrite)
    with atomic_folder(folder) as tmp:
        for name in INFERENCE_FILES:
            if (ckpt / name).is_file():
                shutil.copy2(ckpt / name, tmp / name)
        if (ckpt / "autoencoder").is_dir():
            shutil.copytree(ckpt / "autoencoder", tmp / "autoencoder")
        if (ckpt / "eval" / "report.json").is_file():
            (tmp / "eval").mkdir()
            shutil.copy2(ckpt / "eval" / "report.json", tmp / "eval" / "report.json")
        loaded = load_checkpoint(ckpt)
        (tmp / "README.md").write_text(model_card(loaded.config, loaded.step, loaded.model.num_params(),
                                                  loaded.model.num_params(active=True), latest_report(ckpt), repo_id))
    return folder


def save_merged(source: str | Path, folder: str | Path, lora: str | Path | None = None, ema: bool = False,
                overwrite: bool = False) -> Path:
    """Write ``source`` (a LoRA run or checkpoint; or whole weights with a ``lora`` adapter) as a
    folder of whole weights with the adapters merged in: it loads without the start it adapted.
    ``ema``: the adapters' EMA. ``folder`` as for ``save_pretrained``."""
    from safetensors.torch import save_file

    from transfusion.autoencoders import IdentityAutoencoder, save_autoencoder
    from transfusion.checkpoint import is_adapter
    from transfusion.config import LoraConfig, config_yaml, with_fields

    ckpt = resolve_checkpoint(source)
    if not lora and not is_adapter(ckpt):
        raise ValueError(f"{source} holds whole weights, no LoRA adapter: name one with --lora, or use save-pretrained")
    loaded = load_checkpoint(ckpt, ema=ema, lora=lora)
    folder = check_export_target(folder, "merge-lora", SAVED_NAMES, overwrite)
    config = with_fields(loaded.config, {"train": {"lora": LoraConfig()}})  # plain weights now
    with atomic_folder(folder) as tmp:
        save_file(untied_weights(loaded.model.state_dict(), config), tmp / "model.safetensors")
        (tmp / "config.yaml").write_text(config_yaml(config))
        (tmp / "tokenizer.json").write_text(loaded.tokenizer.to_json())
        if not isinstance(loaded.autoencoder, IdentityAutoencoder):
            save_autoencoder(loaded.autoencoder, tmp / "autoencoder")
        shutil.copy2(ckpt / "state.json", tmp / "state.json")
        (tmp / "README.md").write_text(model_card(config, loaded.step, loaded.model.num_params(),
                                                  loaded.model.num_params(active=True)))
    return folder


def from_pretrained(spec: str | Path, device: str = "cpu", ema: bool = False, lora: str | Path | None = None) -> Loaded:
    """A saved folder, a run, a checkpoint or a Hub repo id -> model, tokenizer, autoencoder, config;
    ``lora``: a LoRA adapter merged into its weights."""
    return load_checkpoint(spec, device=device, ema=ema, lora=lora)


def push_to_hub(source: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """``save_pretrained`` into a temporary folder, then create the Hub repo (if needed) and upload
    it with ``huggingface_hub.HfApi``; returns the commit URL. Needs a login (``hf auth login``
    or ``HF_TOKEN``) and the network."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(source, Path(tmp) / "model", repo_id=repo_id)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True)
        step = json.loads((folder / "state.json").read_text())["step"]
        info = api.upload_folder(repo_id=repo_id, folder_path=folder,
                                 commit_message=commit_message or f"transfusion checkpoint, step {step}")
    return str(getattr(info, "commit_url", info))
