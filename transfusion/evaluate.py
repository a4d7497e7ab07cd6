"""Held-out samples and their scores, each written with the settings that produced them.

- text to image: one image per held-out caption; on the shapes data the attribute reader
  scores it (colour, shape, size, position, count, relation, exact);
- image to text: a greedy caption per held-out image; on the shapes data it is parsed back
  and compared with the truth.
Other datasets get the samples without scores.
"""

from __future__ import annotations

import torch

from transfusion.checkpoint import Loaded
from transfusion.data.document import Document
from transfusion.data.shapes_reader import score, score_caption, summarise
from transfusion.sample import generate_images, generate_text

CHUNK = 32  # prompts per generation batch


def held_out_pairs(loaded: Loaded, n: int) -> list[Document]:
    """The first ``n`` caption + image documents of the run's test split."""
    from transfusion.data.registry import load_dataset

    cfg = loaded.config
    data = load_dataset(cfg.data.dataset, "test", cfg.image.size)
    docs = []
    for i in range(len(data)):
        doc = data[i]
        if doc.kind == "pair":
            docs.append(doc)
            if len(docs) == n:
                break
    if not docs:
        raise ValueError(f"the test split of {cfg.data.dataset!r} holds no caption + image documents")
    return docs


def prompt_following(loaded: Loaded, docs: list[Document], steps: int, guidance: float, seed: int = 0) -> dict:
    """Generate one image for each document's caption; score it where the reader applies."""
    captions = [doc.caption for doc in docs]
    generator = torch.Generator().manual_seed(seed)
    images = torch.cat([
        generate_images(
            loaded.model, loaded.tokenizer, loaded.autoencoder, captions[i : i + CHUNK],
            loaded.config.image.size, steps, guidance, generator,
        )
        for i in range(0, len(captions), CHUNK)
    ])
    scored = all("scene" in doc.meta for doc in docs)
    return {
        "settings": {"data": f"{loaded.config.data.dataset}/test", "samples": len(docs), "seed": seed,
                     "sampler": "ddpm", "steps": steps, "guidance": guidance, "step": loaded.step},
        "accuracy": summarise([score(img, cap) for img, cap in zip(images, captions)]) if scored else {},
        "captions": captions,
        "images": images,
    }


def captioning(loaded: Loaded, docs: list[Document], max_new_tokens: int = 24) -> dict:
    """Greedy captions for each document's image; compared with the truth where the reader applies."""
    texts: list[str] = []
    for i in range(0, len(docs), CHUNK):
        prompts = [[doc.images[0]] for doc in docs[i : i + CHUNK]]
        texts += generate_text(loaded.model, loaded.tokenizer, loaded.autoencoder, prompts, max_new_tokens)
    scored = all("scene" in doc.meta for doc in docs)
    return {
        "settings": {"data": f"{loaded.config.data.dataset}/test", "samples": len(docs), "decoding": "greedy",
                     "max_new_tokens": max_new_tokens, "step": loaded.step},
        "accuracy": summarise([score_caption(t, d.meta["scene"]) for t, d in zip(texts, docs)]) if scored else {},
        "generated": texts,
        "references": [doc.caption for doc in docs],
        "images": torch.stack([doc.images[0].pixels for doc in docs]),
    }


def report(loaded: Loaded, n: int, steps: int, guidance: float, seed: int = 0) -> tuple[dict, dict, dict]:
    """Both directions on ``n`` held-out pairs: (summary for report.json, text->image, image->text)."""
    docs = held_out_pairs(loaded, n)
    t2i = prompt_following(loaded, docs, steps, guidance, seed)
    i2t = captioning(loaded, docs)
    summary = {
        "checkpoint": str(loaded.path),
        "text_to_image": {"settings": t2i["settings"], "accuracy": t2i["accuracy"]},
        "image_to_text": {"settings": i2t["settings"], "accuracy": i2t["accuracy"]},
    }
    return summary, t2i, i2t
