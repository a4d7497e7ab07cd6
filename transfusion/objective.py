"""The training objective: L = L_LM + lambda * L_DDPM (SPEC section 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transfusion.data.packing import IGNORE, PackedBatch
from transfusion.diffusion import Diffusion
from transfusion.model.transfusion import Transfusion


def compute_losses(
    model: Transfusion,
    batch: PackedBatch,
    diffusion: Diffusion,
    loss_weight: float,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Noise every image at its own t, run the model once, and score both modalities.

    Returns ``lm`` (mean cross-entropy per text target), ``ddpm`` (mean over images of the
    per-image epsilon MSE) and ``total``; a modality absent from the batch contributes 0.
    With ``image.objective=tokens`` (images as VQ codes, see ``PackedBatch.images_as_tokens``)
    it returns ``lm``, ``image_ce`` (cross-entropy per image-code target) and ``total``,
    the cross-entropy over all targets: plain next-token prediction.
    """
    if model.image_codes:
        return _token_losses(model, batch)
    device = batch.tokens.device
    groups, targets = [], []
    t_all = diffusion.sample_t(batch.max_t.cpu(), generator).to(device)  # (N,): drawn on the CPU generator
    for ids in batch.shape_groups():
        x0 = torch.stack([batch.latents[i] for i in ids]).to(device)  # (n, C, h, w)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = t_all[ids]
        groups.append(batch.image_group(ids, diffusion.q_sample(x0, t, noise), t))
        targets.append(noise)

    hidden, noise_pred = model(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, groups)

    zero = hidden.new_zeros(())
    has_target = batch.targets != IGNORE
    if has_target.any():
        logits = model.logits(hidden[has_target])  # (n_text, V): only where there is a target
        lm = F.cross_entropy(logits.float(), batch.targets[has_target])
    else:
        lm = zero
    ddpm = torch.cat([diffusion.loss(p, n) for p, n in zip(noise_pred, targets)]).mean() if groups else zero
    return {"lm": lm, "ddpm": ddpm, "total": lm + loss_weight * ddpm}


def _token_losses(model: Transfusion, batch: PackedBatch) -> dict[str, torch.Tensor]:
    hidden, _ = model(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids)
    has_target = batch.targets != IGNORE
    targets = batch.targets[has_target]
    ce = F.cross_entropy(model.logits(hidden[has_target]).float(), targets, reduction="none")
    is_code = targets >= model.vocab_size
    mean = lambda x: x.mean() if x.numel() else hidden.new_zeros(())  # noqa: E731
    return {"lm": mean(ce[~is_code]), "image_ce": mean(ce[is_code]), "total": mean(ce)}
