"""Hugging Face Hub repo ids wherever a path is accepted: ``owner/name`` -> a local folder.

    local_folder("runs/tiny", CHECKPOINT_FILES)             # a path that exists: itself
    local_folder("me/transfusion-tiny", CHECKPOINT_FILES)   # a repo id: those files of its snapshot,
                                                            # downloaded into (or read from) the
                                                            # Hugging Face cache with huggingface_hub

``HF_HUB_OFFLINE=1`` (or no network) reads the cache only; ``HF_HUB_CACHE`` / ``HF_HOME`` move
it, as for every Hugging Face library. ``repo@revision`` pins a branch, tag or commit.

Only the files the caller reads are downloaded (its ``allow_patterns``: ``CHECKPOINT_FILES``,
``LM_FILES``, ``AUTOENCODER_FILES``), never the whole repo. An argument that looks like a path
(``./x``, ``/x``, ``~/x``, ``x/`` or ``runs/x`` where ``runs/`` exists here) and is not there
is "no such folder", never a download.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")

# what each reader needs from a repo
CHECKPOINT_FILES = ["model.safetensors", "ema.safetensors", "adapter_config.json", "adapter_model.safetensors",
                    "config.yaml", "tokenizer.json", "state.json", "README.md", "autoencoder/*", "eval/report.json"]
LM_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
AUTOENCODER_FILES = ["config.json", "*.safetensors", "vae/config.json", "vae/*.safetensors", "autoencoder.json"]


def looks_like_path(text: str) -> bool:
    """``./x``, ``/x``, ``~/x``, ``x/``, a Windows path, or ``a/b`` whose ``a`` is a folder here."""
    return (text.startswith((".", "/", "~")) or text.endswith("/") or "\\" in text
            or (text.count("/") == 1 and Path(text.split("/")[0]).is_dir()))


def is_repo_id(spec: str | os.PathLike) -> bool:
    """True for ``owner/name`` (or ``owner/name@revision``) that is not a local path."""
    text = str(spec)
    return bool(_REPO_ID.match(text)) and not Path(text).exists() and not looks_like_path(text)


def local_folder(spec: str | os.PathLike, allow_patterns: list[str], what: str = "folder") -> Path:
    """A local folder for ``spec``: the path itself, or a Hub repo's snapshot of the files matching
    ``allow_patterns`` (see the module doc).

    A path-like ``spec`` that does not exist raises ``FileNotFoundError`` ("no such ``what``"); a
    repo id that is neither cached nor downloadable raises it saying so; anything else is
    returned as a path for the caller to check.
    """
    text = str(spec)
    if not is_repo_id(spec):
        path = Path(text).expanduser()
        if looks_like_path(text) and not path.exists():
            raise FileNotFoundError(f"no such {what}: {text}")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, _, revision = text.partition("@")
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision or None, allow_patterns=allow_patterns))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise FileNotFoundError(
            f"{spec!r} is neither a local path nor a Hugging Face Hub repo that could be "
            f"{'found in the cache (HF_HUB_OFFLINE is set)' if offline else 'downloaded or found in the cache'}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
