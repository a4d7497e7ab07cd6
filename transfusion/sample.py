"""A first sampler: text by greedy / temperature decoding, images by DDPM ancestral sampling.

Every call recomputes the whole sequence at each step (no KV cache yet); prompts of
different lengths are batched, one per row.
"""

from __future__ import annotations

import torch

from transfusion.autoencoder import Autoencoder
from transfusion.data.document import Image, Text
from transfusion.data.packing import Layout, PackedBatch, layout, pack
from transfusion.diffusion import Diffusion
from transfusion.model.transfusion import ImageGroup, Transfusion
from transfusion.tokenizer import Tokenizer


def _check_fits(lengths: list[int], model: Transfusion) -> None:
    longest = max(lengths)
    if longest > model.cfg.model.max_seq_len:
        raise ValueError(
            f"the prompt needs {longest} tokens but the model's context is model.max_seq_len="
            f"{model.cfg.model.max_seq_len}"
        )


def _prompt_layouts(model, tokenizer, prompts: list[list], latents: list[list[torch.Tensor]]) -> list[Layout]:
    return [
        layout(segs, lats, [0] * len(lats), tokenizer, model.num_patches, close=False)
        for segs, lats in zip(prompts, latents)
    ]


def _pack_prompts(model, tokenizer, lays: list[Layout]) -> PackedBatch:
    lengths = [len(lay.ids) for lay in lays]
    _check_fits(lengths, model)
    batch, _ = pack(lays, len(lays), max(lengths), tokenizer.pad_id, one_per_row=True)
    return batch


@torch.no_grad()
def generate_images(
    model: Transfusion,
    tokenizer: Tokenizer,
    autoencoder: Autoencoder,
    captions: list[str | None],
    size: int,
    steps: int = 50,
    guidance: float = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images for captions (None: unconditional): -> pixels (N, 3, size, size) in [-1, 1].

    With ``guidance != 1`` the conditional and unconditional (caption dropped) sequences
    run in one batch and the noise is ``uncond + guidance * (cond - uncond)``.
    """
    device = next(model.parameters()).device
    C, h, w = autoencoder.latent_shape(size, size)
    placeholder = torch.zeros(C, h, w)
    prompts = [[Text(c), Image(placeholder)] if c else [Image(placeholder)] for c in captions]
    use_cfg = guidance != 1.0
    if use_cfg:
        prompts += [[Image(placeholder)] for _ in captions]
    lays = _prompt_layouts(model, tokenizer, prompts, [[placeholder]] * len(prompts))
    batch = _pack_prompts(model, tokenizer, lays)
    index = torch.stack(batch.index).to(device)  # (rows, P): one image per row, in row order
    rows = [t.to(device) for t in (batch.tokens, batch.positions, batch.doc_ids, batch.image_ids)]
    n = len(captions)

    def predict_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if use_cfg:
            x, t = torch.cat([x, x]), torch.cat([t, t])
        _, (eps,) = model(*rows, [ImageGroup(x, t, index)])
        if use_cfg:
            cond, uncond = eps[:n], eps[n:]
            eps = uncond + guidance * (cond - uncond)
        return eps

    diffusion = Diffusion(model.cfg.diffusion.timesteps, model.cfg.diffusion.schedule)
    latents = diffusion.sample_ddpm(
        predict_noise, (n, C, h, w), steps, generator, clip=model.cfg.image.clip_sample, device=device
    )
    return autoencoder.decode(latents).clamp(-1, 1)


@torch.no_grad()
def generate_text(
    model: Transfusion,
    tokenizer: Tokenizer,
    autoencoder: Autoencoder,
    prompts: list[list],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Continue interleaved prompts (lists of Text / Image segments) with text.

    Images in the prompt are given clean (t = 0). Decoding is greedy at temperature 0
    (the paper's default), else sampled; each prompt stops at EOS or BOI.
    """
    device = next(model.parameters()).device
    latents = [
        [autoencoder.encode(s.pixels[None].to(device))[0] for s in segs if isinstance(s, Image)] for segs in prompts
    ]
    base = _prompt_layouts(model, tokenizer, prompts, latents)
    extra: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    stop = {tokenizer.eos_id, tokenizer.boi_id}
    for _ in range(max_new_tokens):
        lays = [Layout(b.ids + e, b.images) for b, e in zip(base, extra)]
        batch = _pack_prompts(model, tokenizer, lays)
        groups = [
            ImageGroup(
                torch.stack([batch.latents[i] for i in ids]).to(device),
                torch.zeros(len(ids), dtype=torch.long, device=device),
                torch.stack([batch.index[i] for i in ids]).to(device),
            )
            for ids in batch.shape_groups()
        ]
        hidden, _ = model(
            batch.tokens.to(device), batch.positions.to(device), batch.doc_ids.to(device),
            batch.image_ids.to(device), groups,
        )
        last = (batch.doc_ids >= 0).sum(1) - 1  # (rows,): each row's last position
        logits = model.logits(hidden[torch.arange(len(prompts)), last.to(device)]).float()  # (rows, V)
        if temperature > 0:
            probs = torch.softmax(logits / temperature, -1)
            next_ids = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0]
        else:
            next_ids = logits.argmax(-1).cpu()
        for i, tok in enumerate(next_ids.tolist()):
            if not done[i]:
                extra[i].append(tok)
                done[i] = tok in stop
        if all(done):
            break
    return [tokenizer.decode(e) for e in extra]
