"""Training on many processes with PyTorch's own stack: torchrun, DDP and FSDP2.

One process (no launcher) is the world of size 1 and uses the same code. Under ``torchrun``
each process builds the model on the meta device, wraps or shards it
(``train.parallel=ddp | fsdp``), and only then allocates and initialises its weights
(``Transfusion.init_weights``: every weight is a function of the seed and its name, so
any number of processes starts from the same model). Each process builds and trains on its
own rows of every global batch (``rows_of``), in ``train.grad_accum`` micro-batches; losses
are normalised by the global counts of text targets and images, so the gradient is the
one of the whole global batch, whatever the split.

    torchrun --standalone --nproc_per_node=8 -m transfusion train --preset 0.16B --out runs/a \\
        train.device=cuda train.parallel=fsdp train.precision=bf16
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from transfusion.config import Config
from transfusion.model.lora import add_lora, has_lora
from transfusion.model.transfusion import Transfusion


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes (in float64, so counts stay exact)."""
        if self.size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.tolist()


    def merge(self, part: dict) -> dict:
        """The union of every process's ``part`` (dicts of disjoint keys), on every process."""
        if self.size == 1:
            return dict(part)
        parts = [None] * self.size
        dist.all_gather_object(parts, part)
        merged: dict = {}
        for p in parts:
            for k, v in p.items():
                merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
        return merged


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but torch sees no CUDA GPU here "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: only cpu and cuda are supported")
    return device


def init_world(cfg: Config) -> tuple[World, torch.device]:
    """Join the process group that torchrun describes (if any); this process's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if size > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, local_rank), device


def close_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rows_of(world: World, cfg: Config, micro: int) -> range:
    """The rows of each global batch that this process trains on in micro-batch ``micro``."""
    rows, accum = cfg.data.batch_size, cfg.train.grad_accum
    if rows % (world.size * accum):
        raise ValueError(f"data.batch_size={rows} rows must split evenly over {world.size} processes x "
                         f"train.grad_accum={accum} micro-batches")
    per_process = rows // world.size
    per_micro = per_process // accum
    start = world.rank * per_process + micro * per_micro
    return range(start, start + per_micro)


def build_model(cfg: Config, tokenizer, autoencoder, world: World, device: torch.device):
    """The training model: built on the meta device, compiled / checkpointed / sharded as
    configured, then materialised on ``device`` and initialised.

    Returns ``(model, core)``: what the training step calls (DDP- or FSDP-wrapped) and the
    plain ``Transfusion`` inside it.
    """
    with torch.device("meta"):
        core = Transfusion.build(cfg.model, cfg.image, tokenizer, autoencoder)
    t = cfg.train
    if t.lora.rank:  # before sharding: the adapters are sharded, initialised and wrapped with their layers
        add_lora(core, t.lora, base=t.init_from or cfg.model.init_from, train_fully=untrained_layers(cfg, core))
    core.trunk.checkpointing = t.activation_checkpointing
    if t.compile:
        for block in core.trunk.blocks:
            block.compile()
    if world.size > 1 and t.parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        mesh = init_device_mesh(device.type, (world.size,))
        for block in core.trunk.blocks:
            fully_shard(block, mesh=mesh)
        if core.image is not None:  # one unit; its entry points are encode and decode
            fully_shard(core.image, mesh=mesh)
            register_fsdp_forward_method(core.image, "encode")
            register_fsdp_forward_method(core.image, "decode")
        fully_shard(core, mesh=mesh)  # the root unit holds the embedding and head: a tied matrix is sharded once
    core.to_empty(device=device)
    core.tie_weights()  # to_empty gives each plain (unsharded) weight a tensor of its own
    core.init_weights(t.seed, assign=assign_shard)
    if cfg.model.freeze_text:  # before any wrapper registers its gradient hooks
        core.freeze_text(tokenizer.new_ids)
    model = core
    if world.size > 1 and t.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)
    return model, core


def untrained_layers(cfg: Config, core: Transfusion) -> tuple[str, ...]:
    """The layers a LoRA run trains in full: the image layers of a pretrained language model's
    start (``model.init_from``), which start untrained."""
    return ("image",) if cfg.model.init_from and not cfg.train.init_from and core.image is not None else ()


def assign_shard(param: torch.Tensor, value: torch.Tensor) -> None:
    """Write the whole ``value`` into ``param``: all of it, or for a sharded (DTensor) weight
    this process's shard of it."""
    if isinstance(param, DTensor):
        value = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None).to_local()
        param = param.to_local()
    param.copy_(value)


def unwrap(model: torch.nn.Module) -> Transfusion:
    """The plain model inside a DDP wrapper (an FSDP2 model is its own)."""
    return model.module if hasattr(model, "module") else model


def sync_gradients(model, enabled: bool):
    """Context for one micro-batch: gradients are reduced over processes only on the last one."""
    if hasattr(model, "no_sync"):  # DDP
        return nullcontext() if enabled else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return nullcontext()


def local(t: torch.Tensor) -> torch.Tensor:
    """A process's own part of a (possibly sharded) tensor."""
    return t.to_local() if isinstance(t, DTensor) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole of a (possibly sharded) tensor, on every process (a collective for DTensors)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def sampling_model(model, core: Transfusion, cfg: Config, tokenizer, autoencoder, world: World, device):
    """The whole model, for sampling on the first process (``None`` elsewhere): ``core``
    itself unless it is sharded, else a gathered copy (a collective: every process calls it)."""
    if not any(isinstance(p, DTensor) for p in core.parameters()):
        return core
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not world.main:
        return None
    whole = Transfusion.build(cfg.model, cfg.image, tokenizer, autoencoder)
    if has_lora(core):
        add_lora(whole, cfg.train.lora, config=core.lora_config)
    whole.load_state_dict(weights)
    return whole.to(device)


class EMA:
    """An exponential moving average of the weights, each kept sharded like its weight."""

    def __init__(self, core: torch.nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        self.names = [n for n, p in core.named_parameters() if p.requires_grad]
        params = dict(core.named_parameters())
        self.weights = {n: params[n].detach().clone() for n in self.names}

    def decay_at(self, step: int) -> float:
        """The decay of the update after optimizer step ``step`` (0-based): ``decay``, or with
        ``warmup`` min(decay, (1 + step) / (10 + step)) (``train.ema_warmup``)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, core: torch.nn.Module, step: int = 0) -> None:
        params = dict(core.named_parameters())
        torch._foreach_lerp_([local(self.weights[n]) for n in self.names],
                             [local(params[n].detach()) for n in self.names], 1 - self.decay_at(step))

    def full_state(self) -> dict[str, torch.Tensor]:
        """Every EMA weight whole, on the CPU (a collective when sharded)."""
        return {n: full(w).detach().cpu() for n, w in self.weights.items()}
