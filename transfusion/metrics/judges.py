"""Judges of prompt following, chosen by dataset: which attributes a generated image shows,
and whether a generated caption states the truth.

    judge = judge_for(cfg.data.dataset)     # None for data no judge reads (user manifests, corpora)
    judge.images(generated, docs)           # {"colour": 0.84, ...}
    judge.captions(texts, docs)             # {"colour": 0.95, ...}

``shapes``: the deterministic attribute reader (``shapes_reader.py``); ``mnist``: a CNN
trained on the real digits (``digits.py``), reported with its own accuracy on real test digits.
"""

from __future__ import annotations

import torch


class ShapesJudge:
    name = "shapes attribute reader"

    def images(self, images: torch.Tensor, docs: list) -> dict:
        from transfusion.metrics.shapes_reader import score, summarise

        return summarise([score(img, doc.caption) for img, doc in zip(images, docs)])

    def captions(self, texts: list[str], docs: list) -> dict:
        from transfusion.metrics.shapes_reader import score_caption, summarise

        return summarise([score_caption(t, d.meta["scene"]) for t, d in zip(texts, docs)])


class DigitJudge:
    name = "digit classifier"

    def images(self, images: torch.Tensor, docs: list) -> dict:
        from transfusion.metrics.digits import accuracy, digit_classifier

        net, real_accuracy = digit_classifier(images.shape[-1])
        labels = torch.tensor([doc.meta["label"] for doc in docs])
        return {"digit": accuracy(net, images, labels), "classifier_accuracy_on_real_test_digits": real_accuracy}

    def captions(self, texts: list[str], docs: list) -> dict:
        from transfusion.metrics.digits import digit_in

        return {"digit": sum(digit_in(t) == d.meta["label"] for t, d in zip(texts, docs)) / len(docs)}


JUDGES = {"shapes": ShapesJudge, "mnist": DigitJudge}  # data.dataset -> its judge


def judge_for(dataset: str):
    """The judge of ``data.dataset`` (a built-in name), or None."""
    judge = JUDGES.get(dataset)
    return judge() if judge else None
