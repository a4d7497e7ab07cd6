"""Held-out samples and their scores, each written with the settings that produced them.

- text to image: one image per held-out caption; on the shapes data the attribute reader
  scores it (colour, shape, size, position, count, relation, exact);
- image to text: a greedy caption per held-out image; on the shapes data it is parsed back
  and compared with the truth.
Other datasets get the samples without scores.
"""

from __future__ import annotations

import dataclasses

import torch

from transfusion.checkpoint import Loaded
from transfusion.data.document import Document, Text
from transfusion.data.shapes_reader import score, score_caption, summarise
from transfusion.engine import Engine, Request

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


def _engine(loaded: Loaded) -> Engine:
    return Engine(loaded.model, loaded.tokenizer, loaded.autoencoder)


def prompt_following(loaded: Loaded, docs: list[Document], req: Request = Request()) -> dict:
    """Generate one image for each document's caption; score it where the reader applies.

    Caption i is sampled with seed ``req.seed + i`` whatever the batching.
    """
    req = dataclasses.replace(req.resolve(loaded.config), max_new_tokens=1, max_images=1)
    engine, captions, images = _engine(loaded), [doc.caption for doc in docs], []
    for i in range(0, len(docs), CHUNK):
        prompts = [[Text(c)] if c else [] for c in captions[i : i + CHUNK]]
        outputs = engine.generate(prompts, dataclasses.replace(req, seed=req.seed + i), force_image=True)
        images += [out[0].pixels for out in outputs]
    scored = all("scene" in doc.meta for doc in docs)
    return {
        "settings": {"data": f"{loaded.config.data.dataset}/test", "samples": len(docs), "step": loaded.step,
                     **{k: getattr(req, k) for k in ("sampler", "steps", "guidance", "seed", "image_size")}},
        "accuracy": summarise([score(img, cap) for img, cap in zip(images, captions)]) if scored else {},
        "captions": captions,
        "images": torch.stack(images),
    }


def captioning(loaded: Loaded, docs: list[Document], max_new_tokens: int = 24) -> dict:
    """Greedy captions for each document's image; compared with the truth where the reader applies."""
    engine, texts = _engine(loaded), []
    req = Request(max_new_tokens=max_new_tokens, max_images=0)
    for i in range(0, len(docs), CHUNK):
        outputs = engine.generate([[doc.images[0]] for doc in docs[i : i + CHUNK]], req)
        texts += ["".join(s.text for s in out if isinstance(s, Text)) for out in outputs]
    scored = all("scene" in doc.meta for doc in docs)
    return {
        "settings": {"data": f"{loaded.config.data.dataset}/test", "samples": len(docs), "decoding": "greedy",
                     "max_new_tokens": max_new_tokens, "step": loaded.step},
        "accuracy": summarise([score_caption(t, d.meta["scene"]) for t, d in zip(texts, docs)]) if scored else {},
        "generated": texts,
        "references": [doc.caption for doc in docs],
        "images": torch.stack([doc.images[0].pixels for doc in docs]),
    }


def report(loaded: Loaded, n: int, req: Request = Request()) -> tuple[dict, dict, dict]:
    """Both directions on ``n`` held-out pairs: (summary for report.json, text->image, image->text)."""
    docs = held_out_pairs(loaded, n)
    t2i = prompt_following(loaded, docs, req)
    i2t = captioning(loaded, docs)
    summary = {
        "checkpoint": str(loaded.path),
        "text_to_image": {"settings": t2i["settings"], "accuracy": t2i["accuracy"]},
        "image_to_text": {"settings": i2t["settings"], "accuracy": i2t["accuracy"]},
    }
    return summary, t2i, i2t
