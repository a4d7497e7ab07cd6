"""Scores on the shapes data, each written with the settings that produced it.

- prompt following: images generated for held-out captions, read back by the attribute
  reader (colour, shape, size, position, count, relation, exact);
- captioning: greedy captions of held-out images, parsed back and compared with the truth.
"""

from __future__ import annotations

import torch

from transfusion.checkpoint import Loaded
from transfusion.data.shapes import ShapesDataset, score, score_caption, summarise
from transfusion.sample import generate_images, generate_text

CHUNK = 32  # prompts per generation batch


def prompt_following(
    loaded: Loaded, n: int = 64, steps: int = 50, guidance: float = 3.0, seed: int = 0
) -> dict:
    """Generate one image for each of the first ``n`` held-out captions and score it."""
    cfg = loaded.config
    data = ShapesDataset("test", size=cfg.image.size)
    captions = [data[i].caption for i in range(n)]
    generator = torch.Generator().manual_seed(seed)
    images = torch.cat([
        generate_images(
            loaded.model, loaded.tokenizer, loaded.autoencoder, captions[i : i + CHUNK],
            cfg.image.size, steps, guidance, generator,
        )
        for i in range(0, n, CHUNK)
    ])
    scores = [score(img, cap) for img, cap in zip(images, captions)]
    return {
        "settings": {"split": "shapes/test", "samples": n, "seed": seed, "sampler": "ddpm",
                     "steps": steps, "guidance": guidance, "step": loaded.step},
        "accuracy": summarise(scores),
        "captions": captions,
        "images": images,
    }


def captioning(loaded: Loaded, n: int = 64, max_new_tokens: int = 24) -> dict:
    """Greedy captions for the first ``n`` held-out images, parsed and compared with the truth."""
    data = ShapesDataset("test", size=loaded.config.image.size)
    docs = [data[i] for i in range(n)]
    texts: list[str] = []
    for i in range(0, n, CHUNK):
        prompts = [[doc.images[0]] for doc in docs[i : i + CHUNK]]
        texts += generate_text(loaded.model, loaded.tokenizer, loaded.autoencoder, prompts, max_new_tokens)
    scores = [score_caption(text, doc.meta["scene"]) for text, doc in zip(texts, docs)]
    return {
        "settings": {"split": "shapes/test", "samples": n, "decoding": "greedy",
                     "max_new_tokens": max_new_tokens, "step": loaded.step},
        "accuracy": summarise(scores),
        "generated": texts,
        "references": [doc.caption for doc in docs],
        "images": torch.stack([doc.images[0].pixels for doc in docs]),
    }
