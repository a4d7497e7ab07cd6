"""Writing checkpoints while training, and reading their training state back to resume.

    save_checkpoint(RUN / "checkpoints", step, model, cfg, tokenizer, autoencoder, optimizer, ...)
    state = load_training_state(ckpt, model, optimizer, ema)   # weights, optimizer, EMA, resharded

A checkpoint's layout is ``checkpoint.py``'s. ``train_state/`` is written by every process
(``torch.distributed.checkpoint``: resumable on any number of processes) and read back without
pickle's powers: its ``.metadata`` through an allow-list of DCP's own plain data classes, its
non-tensor values with torch's ``weights_only`` loader, so a hostile run folder runs no code.
"""

from __future__ import annotations

import errno
import json
import pickle
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

from transfusion.autoencoders import Autoencoder, IdentityAutoencoder, save_autoencoder
from transfusion.card import model_card
from transfusion.checkpoint import PREFIX, list_checkpoints
from transfusion.config import Config, config_yaml
from transfusion.distributed import unwrap
from transfusion.model.lora import adapter_weights, has_lora, write_adapter
from transfusion.fileio import DiskFullError, atomic_folder, remove_folder
from transfusion.tokenizer import Tokenizer


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(
    folder: str | Path,
    step: int,
    model: torch.nn.Module,
    config: Config,
    tokenizer: Tokenizer,
    autoencoder: Autoencoder,
    optimizer: torch.optim.Optimizer | None = None,
    extra_state: dict | None = None,
    keep: int = 0,
    ema=None,
) -> Path:
    """Write ``folder/step_{step:06d}`` atomically; keep only the newest ``keep`` (0: all).

    ``model`` may be wrapped (DDP) or sharded (FSDP2); with an ``optimizer`` the training
    state is written too, for ``load_training_state``; ``ema`` is a ``distributed.EMA``.
    A full disk raises ``DiskFullError`` naming the folder and the last good checkpoint,
    which stays as it was.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    folder = Path(folder)
    final = folder / f"{PREFIX}{step:06d}"
    main = _is_main()
    try:
        with _written_by_main(final, main) as tmp:
            if optimizer is not None:
                with _single_process_is_fine(), _disk_full_as_such(tmp / "train_state"):
                    dcp.save(_training_state(model, optimizer, ema), checkpoint_id=tmp / "train_state",
                             no_dist=not dist.is_initialized())
            core = unwrap(model)
            weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                           ignore_frozen_params=has_lora(core)))
            ema_weights = ema.full_state() if ema is not None else None
            if main and has_lora(core):  # the adapters alone, in peft's format; the start's weights stay there
                write_adapter(weights, core.lora_config, tmp)
                if ema_weights is not None:
                    save_file(adapter_weights(ema_weights, core.lora_config), tmp / "ema.safetensors", metadata={"format": "pt"})
            elif main:
                save_file(untied_weights(weights, config), tmp / "model.safetensors")
                if ema_weights is not None:
                    save_file({k: v.contiguous() for k, v in ema_weights.items()}, tmp / "ema.safetensors")
            if main:
                (tmp / "config.yaml").write_text(config_yaml(config))
                (tmp / "tokenizer.json").write_text(tokenizer.to_json())
                if not isinstance(autoencoder, IdentityAutoencoder):
                    save_autoencoder(autoencoder, tmp / "autoencoder")
                (tmp / "state.json").write_text(json.dumps({"step": step, **(extra_state or {})}))
                (tmp / "README.md").write_text(model_card(config, step, core.num_params(), core.num_params(active=True)))
    except DiskFullError:
        good = list_checkpoints(folder)
        last = f"the last good checkpoint is {good[-1]}" if good else "no earlier checkpoint exists"
        raise DiskFullError(28, f"No space left on the device while writing checkpoint step {step} into {folder}; "
                                f"nothing partial was kept and {last}. Free some space and rerun to resume") from None
    _barrier()
    if main and keep > 0:
        for old in list_checkpoints(folder)[:-keep]:
            remove_folder(old)  # renamed aside first: a kill never leaves a half-deleted step_N
    return final


@contextmanager
def _disk_full_as_such(path: Path):
    """``torch.distributed.checkpoint`` wraps a full disk in its own exceptions: raise it as
    ``DiskFullError``, as every other writer here does."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    try:
        yield
    except DiskFullError:
        raise
    except (Exception, CheckpointException) as err:
        seen, todo = set(), [err]
        while todo:
            e = todo.pop()
            if not isinstance(e, BaseException) or id(e) in seen:
                continue
            seen.add(id(e))
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise DiskFullError(errno.ENOSPC, f"No space left on the device while writing {path}") from None
            failures = e.failures.values() if isinstance(e, CheckpointException) else ()
            todo += [e.__cause__, e.__context__, *(exc for exc, _ in failures)]
        raise


def untied_weights(weights: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """The weights to write: a tied LM head (``model.tie_embeddings``) is the embedding, saved once."""
    out = {k: v.detach().contiguous() for k, v in weights.items()}
    if config.model.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


@contextmanager
def _written_by_main(final: Path, main: bool):
    """The temporary folder every process writes its part of a checkpoint into; the first
    process creates it and, once all are done, renames it into place (``fileio.atomic_folder``)."""
    tmp = final.with_name(f".{final.name}.partial")
    if not main:
        _barrier()
        yield tmp
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(final) as tmp:
        _barrier()
        yield tmp


@contextmanager
def _single_process_is_fine():
    """Silence DCP's warning that it runs without a process group: one process is a world too."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _training_state(model, optimizer, ema) -> dict:
    """What ``train_state/`` holds, as (possibly sharded) tensors keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, optimizer, options=_options(model))
    state = {"model": weights, "optim": optim}
    if ema is not None:
        state["ema"] = ema.weights
    return state


def _options(model):
    """How the training state reads the model: a LoRA run's holds its adapters, not the frozen
    weights (which its start gives back)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    lora = has_lora(unwrap(model))
    return StateDictOptions(ignore_frozen_params=lora, strict=not lora)


def load_training_state(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema=None) -> dict:
    """Restore weights, optimizer state and EMA from ``ckpt/train_state``, resharded for this
    run's processes (any number); returns ``state.json``."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    if not (ckpt / "train_state" / ".metadata").is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} holds no training state (train_state/): it can be sampled "
                                f"from, not resumed; start a new run folder")
    _safe_metadata(ckpt / "train_state" / ".metadata")  # a clear error, before DCP wraps it in its own
    state = _training_state(model, optimizer, ema)
    with _single_process_is_fine():
        dcp.load(state, storage_reader=_DataOnlyReader(ckpt / "train_state"), planner=_DataOnlyPlanner(),
                 no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options(model))
    return json.loads((ckpt / "state.json").read_text())


class UnsafeCheckpointError(ValueError):
    """A training state file holds something other than plain data (it could run code if unpickled)."""


# what train_state/.metadata may name: torch.distributed.checkpoint's own data classes, tensor
# sizes, dtypes and layouts, paths. Anything else (os.system, builtins.eval, ...) is refused unread.
_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "ChunkStorageMetadata",
                                              "BytesStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name in _METADATA_CLASSES.get(module, ()) or (
                module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype))):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(f"{module}.{name}")


def _safe_metadata(path: Path):
    """``train_state/.metadata`` (a pickle, as DCP writes it) read through an allow-list of
    plain data classes: a hostile file is refused before anything in it runs."""
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f).load()
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path} names {err}, which a training state never holds: the file was not "
                                    f"written by this library and was not loaded (it could run code). Resume only "
                                    f"run folders you trust, or start a new run") from None
    except Exception as err:
        raise ValueError(f"{path} is not a readable training state ({type(err).__name__}: {err})") from None


class _DataOnlyReader(dcp.FileSystemReader):
    """DCP's file reader with ``.metadata`` read by ``_safe_metadata`` (an allow-list), never by plain pickle."""

    def read_metadata(self, *args, **kwargs):
        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata = _safe_metadata(Path(self.path) / ".metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _DataOnlyPlanner(dcp.DefaultLoadPlanner):
    """Non-tensor values (optimizer hyper-parameters, steps) read with torch's ``weights_only``
    loader (plain containers, numbers, strings and tensors only), not with pickle."""

    def load_bytes(self, read_item, value) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(f"a training state value ({read_item.dest_index.fqn}) holds more than plain "
                                        f"data and was not loaded: {str(err).splitlines()[0]}") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded
