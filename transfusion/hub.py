"""Hugging Face Hub repo ids wherever a path is accepted: ``owner/name`` -> a local folder.

    local_folder("runs/tiny")                 # a path that exists: itself
    local_folder("me/transfusion-tiny")       # a repo id: its snapshot, downloaded into (or read from)
                                              # the Hugging Face cache with huggingface_hub

``HF_HUB_OFFLINE=1`` (or no network) reads the cache only; ``HF_HUB_CACHE`` / ``HF_HOME`` move
it, as for every Hugging Face library. ``repo@revision`` pins a branch, tag or commit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def is_repo_id(spec: str | os.PathLike) -> bool:
    """True for ``owner/name`` (or ``owner/name@revision``) that is not an existing local path."""
    text = str(spec)
    return bool(_REPO_ID.match(text)) and not Path(text).exists() and not text.startswith((".", "/", "~"))


def local_folder(spec: str | os.PathLike, allow_patterns: list[str] | None = None) -> Path:
    """A local folder for ``spec``: the path itself, or a Hub repo's snapshot (see the module doc).

    A repo id that is neither cached nor downloadable raises ``FileNotFoundError`` saying so;
    anything else is returned as a path for the caller to check.
    """
    if not is_repo_id(spec):
        return Path(spec).expanduser()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, _, revision = str(spec).partition("@")
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision or None, allow_patterns=allow_patterns))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise FileNotFoundError(
            f"{spec!r} is neither a local path nor a Hugging Face Hub repo that could be "
            f"{'found in the cache (HF_HUB_OFFLINE is set)' if offline else 'downloaded or found in the cache'}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
