"""The training objective: L = L_LM + lambda * L_DDPM (the paper's section 3.4, equation 4).

Losses are computed in two steps so that any split of a global batch, over processes and
accumulation steps, gives the loss of the whole batch: ``loss_sums`` returns, per term, a
sum and the count it is a mean over (text targets, images); ``combine`` divides by counts,
the batch's own or, in distributed training, the global ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transfusion.batch import IGNORE
from transfusion.data.packing import CONTEXT_IMAGE, PackedBatch
from transfusion.diffusion import CONTEXT_T, Flow, NoiseProcess
from transfusion.model.transfusion import Transfusion

Sums = dict[str, tuple[torch.Tensor, int]]  # term -> (sum, count)
IMAGE_TERMS = ("ddpm", "flow")  # the image loss of each diffusion objective


def compute_losses(
    model: Transfusion,
    batch: PackedBatch,
    diffusion: NoiseProcess | None,
    loss_weight: float,
    core: Transfusion | None = None,
) -> dict[str, torch.Tensor]:
    """Noise every image at its own t (the batch's draw), run the model once, and score both modalities.

    Returns ``lm`` (mean cross-entropy per text target), ``ddpm`` (mean over noised images of
    the per-image epsilon MSE; images given as clean context (``max_t`` 0, editing sources) are
    fed at ``CONTEXT_T`` and not scored; ``flow`` and the velocity MSE for a ``Flow``) and ``total``; a
    modality absent from the batch contributes 0.
    With ``image.objective=tokens`` (images as VQ codes, see ``PackedBatch.images_as_tokens``)
    it returns ``lm``, ``image_ce`` (cross-entropy per image-code target) and ``total``,
    the cross-entropy over all targets: plain next-token prediction.
    """
    return combine(loss_sums(model, batch, diffusion, core), loss_weight)


def combine(sums: Sums, loss_weight: float, counts: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Means of the terms (over ``counts``, default their own) and the ``total`` loss."""
    counts = counts or {k: n for k, (_, n) in sums.items()}
    out = {k: s / max(counts[k], 1) for k, (s, _) in sums.items()}
    image_term = next((k for k in IMAGE_TERMS if k in sums), None)
    if image_term:
        out["total"] = out["lm"] + loss_weight * out[image_term]
    else:  # tokens objective: one cross-entropy over every target
        out["total"] = sum(s for s, _ in sums.values()) / max(sum(counts.values()), 1)
    return out


def image_term(diffusion) -> str:
    """The name of the image loss term: ``ddpm`` or ``flow``."""
    return "flow" if isinstance(diffusion, Flow) else "ddpm"


def loss_counts(batch: PackedBatch, core: Transfusion, term: str = "ddpm") -> dict[str, int]:
    """What each term of ``loss_sums`` is a mean over, read from the batch alone (``term``:
    the image term's name, ``image_term(diffusion)``)."""
    has_target = batch.targets != IGNORE
    if core.image_codes:
        is_code = batch.targets[has_target] >= core.vocab_size
        return {"lm": int((~is_code).sum()), "image_ce": int(is_code.sum())}
    return {"lm": int(has_target.sum()), term: int((batch.max_t != CONTEXT_IMAGE).sum())}


def loss_sums(model, batch: PackedBatch, diffusion: NoiseProcess | None, core: Transfusion | None = None) -> Sums:
    """Per term (``lm``, ``ddpm`` or ``flow``; or ``lm``, ``image_ce``) the summed loss and its count.

    ``model`` is what runs the forward (a DDP or FSDP wrapper, or the model itself); ``core``
    the plain model inside a wrapper (default: ``model``). Timesteps and noise come from the
    batch: its ``t`` and ``noise``, drawn by ``NoiseProcess.draw`` (``BatchBuilder`` draws them).
    """
    core = model if core is None else core
    term = image_term(diffusion)
    counts = loss_counts(batch, core, term)
    has_target = batch.targets != IGNORE
    if core.image_codes:
        logits, _ = model(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, head_at=has_target)
        targets = batch.targets[has_target]
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        is_code = targets >= core.vocab_size
        return {"lm": (ce[~is_code].sum(), counts["lm"]), "image_ce": (ce[is_code].sum(), counts["image_ce"])}

    device = batch.tokens.device
    if batch.latents and (batch.t is None or batch.noise is None):
        raise ValueError("the batch has images but no diffusion draw (t, noise): BatchBuilder draws it; for a "
                         "batch packed by hand: batch.t, batch.noise = diffusion.draw(batch.latents, batch.max_t, g)")
    groups, targets, scored = [], [], []
    for ids in batch.shape_groups():
        x0 = torch.stack([batch.latents[i] for i in ids]).to(device)  # (n, C, h, w)
        noise = torch.stack([batch.noise[i] for i in ids]).to(device)
        t = batch.t[ids].to(device)
        context = (batch.max_t[ids] == CONTEXT_IMAGE).to(device)  # (n,): given clean, as at inference
        x_t = torch.where(context.view(-1, 1, 1, 1), x0, diffusion.q_sample(x0, t, noise))
        t = torch.where(context, torch.full_like(t, CONTEXT_T), t)
        groups.append(batch.image_group(ids, x_t, t))
        targets.append(diffusion.target(x0, noise))
        scored.append(~context)
    if not groups:  # no image here: run the image layers on none, so every weight takes part (DDP, FSDP)
        empty = core.no_images(device)
        groups, targets, scored = [empty], [empty.latents], [torch.ones(0, dtype=torch.bool, device=device)]

    logits, predictions = model(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, groups,
                                head_at=has_target)
    lm = F.cross_entropy(logits.float(), batch.targets[has_target], reduction="sum")
    per_image = torch.cat([diffusion.loss(p, y) for p, y in zip(predictions, targets)])
    image = (per_image * torch.cat(scored)).sum()  # context images carry no loss (their prediction is unused)
    return {"lm": (lm, counts["lm"]), term: (image, counts[term])}
