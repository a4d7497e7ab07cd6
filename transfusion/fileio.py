"""Files users keep, written once and safely; pixels to and from 8-bit; the one image-fitting rule.

- ``atomic_write(path, write)``: ``write(tmp)`` fills a temporary sibling, then one rename
  puts it in place, so a reader never sees half a file; ``atomic_text`` for text.
- ``atomic_folder(final)``: the same for a folder (a checkpoint, an autoencoder).
- A full disk (``ENOSPC``) becomes ``DiskFullError`` naming the path; nothing partial is left.
- ``RunLock(folder)``: one writer per run folder. The lock is an ``flock`` held by the live
  process, so the kernel drops it when that process dies, even by ``kill -9``: a killed
  run never blocks its own resume.
- ``to_uint8`` / ``from_uint8``: (C, H, W) in [-1, 1] <-> (H, W, C) uint8.
- ``fit_image``: every image read from disk (files, manifests, shards) is center-cropped to
  its largest square and resized (bicubic) to the run's size. One rule, so an image looks
  the same to training whichever format carried it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image as PILImage


class DiskFullError(OSError):
    """No space left while writing ``path``; what was there before is untouched."""


def _full_disk(err: OSError, path: Path) -> DiskFullError:
    return DiskFullError(errno.ENOSPC, f"No space left on the device while writing {path}; free some space and "
                                       f"rerun (nothing partial was left behind)")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it onto ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise _full_disk(err, path) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def cache_dir() -> Path:
    """Where models and features computed on first use are kept: ``$TRANSFUSION_CACHE``, or
    ``~/.cache/transfusion``."""
    return Path(os.environ.get("TRANSFUSION_CACHE", Path.home() / ".cache" / "transfusion"))


def atomic_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success it replaces ``final``,
    on any error it is removed (``ENOSPC`` raised as ``DiskFullError``)."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno == errno.ENOSPC and not isinstance(err, DiskFullError):
            raise _full_disk(err, final) from err
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class RunLockedError(RuntimeError):
    """The run folder is being written by a live process."""


class RunLock:
    """An exclusive lock on a run folder, held while this process lives (``flock`` on
    ``folder/.lock``). A second writer gets a ``RunLockedError`` naming the holder."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / ".lock"
        self._file = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunLockedError(f"{self.path.parent} is being written by a live run ({holder}); wait for it to end, "
                               f"stop it, or use another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def quantise(pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels in [-1, 1] -> uint8 of the same shape, as a saved PNG holds them."""
    return ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [-1, 1] -> (H, W, C) uint8."""
    return quantise(pixels).permute(1, 2, 0).cpu().numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 (or 0..255 floats) -> (C, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.asarray(array, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1


def to_pil(pixels: torch.Tensor) -> PILImage.Image:
    """(C, H, W) in [-1, 1] -> an RGB (or, for one channel, greyscale) PIL image."""
    array = to_uint8(pixels)
    return PILImage.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def fit_image(image: PILImage.Image, size: int) -> torch.Tensor:
    """An opened image -> (3, size, size) in [-1, 1]: RGB, largest centered square, bicubic resize."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return from_uint8(np.asarray(image.resize((size, size), PILImage.Resampling.BICUBIC)))
