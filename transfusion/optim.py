"""The optimizer and its learning-rate schedule.

    optimizer = build_optimizer(model, cfg)   # AdamW; matrices decay, vectors do not
    lr = lr_at(step, cfg)                     # linear warmup, then cosine decay to optim.min_lr
"""

from __future__ import annotations

import math

import torch

from transfusion.config import Config
from transfusion.distributed import unwrap


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup, then cosine decay to ``min_lr`` at the last step."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, cfg.train.steps - o.warmup_steps)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))



def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW; matrices decay, vectors do not (``Transfusion.decay_groups``). The fused kernel (one pass
    over each parameter) where every parameter is a plain tensor; sharded ones use foreach."""
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.requires_grad]
    fused = not any(isinstance(p, DTensor) for p in params)
    decay, no_decay = unwrap(model).decay_groups()
    o = cfg.optim
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused,
    )
