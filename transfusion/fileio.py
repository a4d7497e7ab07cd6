"""Files users keep, written once and safely; pixels to and from 8-bit; the one image-fitting rule.

- ``atomic_write(path, write)``: ``write(tmp)`` fills a temporary sibling, then one rename
  puts it in place, so a reader never sees half a file; ``atomic_text`` for text.
- ``atomic_folder(final)``: the same for a folder (a checkpoint, an export), safe against a
  kill at any moment; ``check_export_target`` first refuses a folder holding a user's files
  or a run, so no command deletes a file it did not write.
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


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's (its entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (and itself), so a rename that follows
    never publishes a folder whose contents a power cut could still lose."""
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def remove_folder(folder: Path) -> None:
    """Delete a folder this library wrote: first renamed aside (hidden), then removed, so a
    kill half-way never leaves a half-deleted folder under its real name."""
    if not folder.exists():
        return
    doomed = folder.with_name(f".{folder.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success it replaces ``final``,
    on any error it is removed (``ENOSPC`` raised as ``DiskFullError``).

    The replacement survives a kill at any moment: the new folder is written and fsynced
    under a hidden name, an existing ``final`` is moved aside (``.NAME.old``), the new one
    renamed into place, and only then the old one deleted. A kill between the two renames
    leaves ``.NAME.old`` whole, and the next write of ``final`` puts it back first. Callers
    that write into a folder a user names check it with ``check_export_target`` first."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.partial")
    old = final.with_name(f".{final.name}.old")
    if old.exists() and not final.exists():  # an earlier replacement was killed between its renames
        os.replace(old, final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno == errno.ENOSPC and not isinstance(err, DiskFullError):
            raise _full_disk(err, final) from err
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


RUN_MARKERS = ("checkpoints", "metrics.jsonl", ".lock")  # beside config.yaml, these make a folder a run


def run_holding(folder: Path) -> Path | None:
    """The training run folder that is or holds ``folder`` (a run keeps config.yaml with
    checkpoints/, metrics.jsonl or its .lock), or None."""
    for candidate in (folder, *folder.parents):
        if (candidate / "config.yaml").is_file() and any((candidate / m).exists() for m in RUN_MARKERS):
            return candidate
    return None


def check_export_target(folder: str | os.PathLike, kind: str, written: set[str], overwrite: bool = False,
                        key: str = "model.safetensors") -> Path:
    """Refuse to write an export into ``folder`` where that would delete files it did not write.

    Allowed: a new or empty folder; a previous export of the same kind (it holds ``key`` and
    every entry is a name in ``written``, so it is replaced); any other folder with
    ``overwrite``. Never a folder that is, holds or is inside a training run. Returns the folder."""
    folder = Path(folder).expanduser()
    run = run_holding(folder.resolve())
    if run is not None:
        where = "is" if run == folder.resolve() else "is inside"
        raise ValueError(f"{folder} {where} the training run {run}: an export never writes into a run; "
                         f"name a new folder")
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder; name a new folder")
    entries = sorted(p.name for p in folder.iterdir())
    earlier_export = key in entries
    foreign = [name for name in entries if not (earlier_export and name in written)]
    if foreign and overwrite:
        for inner in folder.rglob("config.yaml"):
            if run_holding(inner.parent) == inner.parent:
                raise ValueError(f"{folder} holds the training run {inner.parent}: an export never replaces a run; "
                                 f"name a new folder")
    if foreign and not overwrite:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"{folder} already holds files that are not a {kind} export ({shown}); writing there would "
                         f"delete them. Name a new or empty folder, or pass --overwrite to replace the whole folder")
    return folder


class RunLockedError(RuntimeError):
    """The run folder is being written by a live process."""


_HELD: set[int] = set()  # descriptors of the lock files this process holds


def _drop_inherited_locks() -> None:
    """In a forked child (a data worker): close its copies of the parent's lock descriptors, so
    a lock lives exactly as long as the process that took it (an ``flock`` belongs to the open
    file, which a fork shares; the parent's own descriptor keeps it held)."""
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunLock:
    """An exclusive lock on a run folder, held while this process lives (``flock`` on
    ``folder/.lock``). A second writer gets a ``RunLockedError`` naming the holder. Forked
    children (data workers) do not keep it, so a ``kill -9`` of the run frees it at once."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None
        self._pid = 0

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is being written by a live run ({holder}); wait for it to end, "
                               f"stop it, or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._fd, self._pid = fd, os.getpid()
        _HELD.add(fd)
        return self

    def release(self) -> None:
        if self._fd is not None and self._pid == os.getpid():  # a forked child holds no copy to release
            _HELD.discard(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = None

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


IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # the formats read from users' files and uploads


def open_image(source, max_pixels: int | None = None, formats: tuple[str, ...] = IMAGE_FORMATS) -> PILImage.Image:
    """Open an image that came from a user (an upload, a data folder, a shard, a Parquet cell).

    ``source`` is a path or a binary file object. Only ``formats`` are tried: Pillow would
    otherwise try every plug-in it has, some of which parse little-used formats or hand the
    file to another program (EPS to Ghostscript). The header's size is checked against
    ``max_pixels`` before any pixel is decoded (default: Pillow's ``MAX_IMAGE_PIXELS``, which on
    its own only warns below twice its value), so a small file that decodes to a huge image is
    refused. Raises ``PIL.UnidentifiedImageError`` (not an image of those formats) or
    ``PIL.Image.DecompressionBombError`` (too many pixels); the caller closes the image
    (``with open_image(...) as image:``).
    """
    cap = PILImage.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        image = PILImage.open(source, formats=list(formats))
    except PILImage.UnidentifiedImageError:
        raise PILImage.UnidentifiedImageError(f"not an image of a supported format ({', '.join(formats)})") from None
    if cap is not None and image.width * image.height > cap:
        width, height = image.size
        image.close()
        raise PILImage.DecompressionBombError(f"the image is {width}x{height} pixels; at most {cap} are accepted")
    return image
