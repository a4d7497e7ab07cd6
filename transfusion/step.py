"""One training step: forward and backward over this process's micro-batches of one global batch,
with every loss term divided by its count over the whole batch (``objective.combine``), so any
split over processes and micro-batches gives exactly the single-process gradient.
"""

from __future__ import annotations

import torch

from transfusion.config import Config
from transfusion.distributed import World, sync_gradients, unwrap
from transfusion.objective import combine, image_term, loss_counts, loss_sums


def train_step(model, micro_batches, diffusion, cfg: Config, world: World, autocast) -> tuple[dict[str, float], int]:
    """Forward and backward over this process's micro-batches of one global batch.

    Each term is divided by its count over the whole global batch (every process, every
    micro-batch), so the summed gradient is the single-process gradient of that batch.
    Returns the global mean of each loss term and ``total``, and the global batch's tokens.
    """
    core = unwrap(model)
    local_counts = [loss_counts(b, core, image_term(diffusion)) for b in micro_batches]
    names = list(local_counts[0])
    counts = dict(zip(names, world.sum([sum(c[k] for c in local_counts) for k in names])))
    logged = []
    for i, batch in enumerate(micro_batches):
        with sync_gradients(model, i == len(micro_batches) - 1), autocast():
            terms = loss_sums(model, batch, diffusion, core=core)
            loss = combine(terms, cfg.diffusion.loss_weight, counts)["total"]
        (loss * world.size).backward()  # DDP and FSDP average gradients over processes; we want their sum
        logged.append(torch.stack([terms[k][0].detach().float() for k in names]))
    sums = torch.stack(logged).sum(0).tolist()  # one device sync for the step
    *totals, tokens = world.sum([*sums, sum(b.num_tokens for b in micro_batches)])
    out = combine({k: (torch.tensor(v), counts[k]) for k, v in zip(names, totals)}, cfg.diffusion.loss_weight)
    return {k: float(v) for k, v in out.items()}, int(tokens)
