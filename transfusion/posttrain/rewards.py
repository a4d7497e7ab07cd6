"""Rewards for post-training: plain functions of (caption, image) -> float in [0, 1].

    reward = load_reward("shapes")                  # or shapes_strict, digits, edit, python:my_rewards.red
    reward("a small red circle at the top", pixels)  # pixels (3, H, W) in [-1, 1]
    reward(instruction, pixels, source)             # an edit's: the source image too

The prompt is a ``str`` (``policy.Prompt``: its ``meta`` holds the scene or edit the dataset
made it from, which the built-in rewards read).

Each built-in reward is an exact judge, not a learned one, so a policy cannot raise it without
drawing what the caption says:

- ``shapes``: the share of the caption's stated attributes (colour, shape, size, position,
  count, relation) that the shapes reader finds in the image (``metrics/shapes_reader.py``);
- ``shapes_strict``: the same share with one more attribute, that the image holds as many
  objects as the caption asks for (one, its count, or two for a relation);
- ``shapes_exact``: 1 when the reader finds all of them and nothing else (its ``exact``), else 0;
- ``digits``: the digit classifier's probability of the digit the caption names (``metrics/digits.py``);
- ``edit``: for an editing triple, the mean of the edit reader's success (the change asked for
  holds) and preservation (nothing else changed) (``metrics/edit_reader.py``); ``edit_exact``:
  1 when both hold;
- ``captions`` (post-training captioning): the share of the image's attributes the caption
  states rightly, read by the shapes reader's parse of the caption (``score_caption``); its
  signature is (prompt, caption, image);
- ``python:module.function``: a function of yours, importable from the working directory, with
  the same signature. It runs as your code: name only modules you trust.
"""

from __future__ import annotations

import importlib
import math
from typing import Callable

import torch

from transfusion.posttrain.objective import varied_groups

Reward = Callable[[str, torch.Tensor], float]
STATED = ("colour", "shape", "size", "position", "count", "relation")


def _truth(caption):
    """What the reader scores against: the prompt's scene when it carries one (a caption in other
    words), else the caption, parsed."""
    return getattr(caption, "meta", {}).get("scene") or caption


def _share(found: dict, *more: bool) -> float:
    """The share of the stated attributes a judge ``found`` (None: not stated), and of ``more``, that hold."""
    stated = [found[a] for a in STATED if found.get(a) is not None] + list(more)
    return sum(stated) / len(stated)


def shapes_reward(caption: str, pixels: torch.Tensor) -> float:
    """The share of the caption's stated attributes that hold in the image."""
    from transfusion.metrics.shapes_reader import score

    return _share(score(pixels, _truth(caption)))


def shapes_strict_reward(caption: str, pixels: torch.Tensor) -> float:
    """``shapes`` with one more attribute: the image holds as many objects as the caption asks
    for, so an extra object that makes a count or a relation hold is no longer free."""
    from transfusion.metrics.shapes_reader import score

    found = score(pixels, _truth(caption))
    return _share(found, found["objects"])


def shapes_exact_reward(caption: str, pixels: torch.Tensor) -> float:
    """1 when the image shows exactly what the caption says (the reader's ``exact``), else 0."""
    from transfusion.metrics.shapes_reader import score

    return float(bool(score(pixels, _truth(caption))["exact"]))


def digits_reward(caption: str, pixels: torch.Tensor) -> float:
    """The classifier's probability of the digit the caption names."""
    from transfusion.metrics.digits import digit_classifier, digit_in

    digit = digit_in(caption)
    if digit is None:
        raise ValueError(f"caption {caption!r} names no digit")
    net, _ = digit_classifier(pixels.shape[-1])
    with torch.no_grad():
        return float(net(pixels[None].float()).softmax(-1)[0, digit])


def _edit_scores(instruction, pixels: torch.Tensor) -> dict:
    from transfusion.metrics.edit_reader import score_edit

    edit = getattr(instruction, "meta", {}).get("edit")
    if edit is None:
        raise ValueError(f"the edit reward reads the true edit of a shapes editing triple; {instruction!r} has none")
    return score_edit(pixels, edit)


def edit_reward(instruction, pixels: torch.Tensor, source: torch.Tensor | None = None) -> float:
    """The mean of the edit's success and its preservation of everything else."""
    scores = _edit_scores(instruction, pixels)
    return (float(scores["success"]) + float(scores["preservation"])) / 2


def edit_exact_reward(instruction, pixels: torch.Tensor, source: torch.Tensor | None = None) -> float:
    """1 when the edit succeeded and preserved everything else, else 0."""
    scores = _edit_scores(instruction, pixels)
    return float(scores["success"] and scores["preservation"])


def captions_reward(prompt, caption: str, pixels: torch.Tensor | None = None) -> float:
    """The share of the attributes of the image's scene that the caption states rightly."""
    from transfusion.metrics.shapes_reader import score_caption

    scene = getattr(prompt, "meta", {}).get("scene")
    if scene is None:
        raise ValueError("the captions reward reads the scene of a shapes image; this prompt has none")
    return _share(score_caption(caption, scene))


BUILT_IN = {"shapes": shapes_reward, "shapes_strict": shapes_strict_reward, "shapes_exact": shapes_exact_reward,
            "digits": digits_reward, "edit": edit_reward, "edit_exact": edit_exact_reward, "captions": captions_reward}
EDIT_REWARDS = ("edit", "edit_exact")  # rewards of editing triples: their prompts are edits
CAPTION_REWARDS = ("captions",)  # rewards of captions: their prompts are images



def load_reward(spec: str) -> Reward:
    """A built-in reward by name, or ``python:module.function``; the result is checked in use."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    if not spec.startswith("python:") or "." not in spec:
        raise ValueError(f"unknown reward {spec!r}: one of {', '.join(BUILT_IN)}, or python:module.function")
    module, _, name = spec.removeprefix("python:").rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reward {spec!r}: {err}") from None
    if not callable(fn):
        raise ValueError(f"reward {spec!r} is not a function")
    return fn


def _checked(value, what: str) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"the reward gave {value!r} for {what}: it must be a number in [0, 1]")
    return float(value)


def score_captions(reward, prompts: list[str], captions: list[str]) -> torch.Tensor:
    """Each caption's reward (N,), given its prompt (whose ``source`` is the image), checked."""
    return torch.tensor([_checked(reward(p, c, p.source), repr(c)) for p, c in zip(prompts, captions, strict=True)])


def score_all(reward: Reward, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    """Each image's reward (N,), checked: a number in [0, 1]. An edit's reward is given its source."""
    values = []
    for caption, pixels in zip(prompts, images.cpu(), strict=True):
        source = getattr(caption, "source", None)
        value = reward(caption, pixels) if source is None else reward(caption, pixels, source)
        values.append(_checked(value, repr(caption)))
    return torch.tensor(values)


def judged_images(prompts: list[str], images: torch.Tensor, edits: bool, group: int = 1) -> dict:
    """What the exact judges read in images: an edit's success and preservation (``edits``), else
    the shapes reader's per-attribute shares (prompts with a scene: shapes data; else {}); with
    ``group`` > 1 (each prompt ``group`` times in a row) also ``varied_<attribute>`` (``_with_varied``)."""
    if edits:
        from transfusion.metrics.edit_reader import score_edit

        scores = [score_edit(img, p.meta["edit"]) for img, p in zip(images.cpu(), prompts)]
        return _with_varied({k: sum(s[k] for s in scores) / len(scores) for k in ("success", "preservation")},
                            scores, group)
    if not all("scene" in getattr(p, "meta", {}) for p in prompts):
        return {}
    from transfusion.metrics.shapes_reader import score, summarise

    scores = [score(img, p.meta["scene"]) for img, p in zip(images.cpu(), prompts)]
    return _with_varied(summarise(scores), scores, group)


def judged_captions(prompts: list[str], texts: list[str], group: int = 1) -> dict:
    """The shares of captions that state each attribute of their image's scene rightly (and with
    ``group`` > 1 ``varied_<attribute>``, as ``judged_images``)."""
    from transfusion.metrics.shapes_reader import score_caption, summarise

    scores = [score_caption(text, p.meta["scene"]) for p, text in zip(prompts, texts)]
    return _with_varied(summarise(scores), scores, group)


def _with_varied(shares: dict, scores: list[dict], group: int) -> dict:
    """``shares`` and, with ``group`` > 1, for each of their attributes the share of the groups
    stating it whose ``scores`` disagree on it (``varied_<attribute>``): only those carry a signal
    about that attribute to GRPO, so an attribute the start almost never gets right (or always
    does) cannot move much."""
    varied = {f"varied_{key}": varied_groups([s[key] for s in scores], group) for key in shares} if group > 1 else {}
    return {**shares, **{k: v for k, v in varied.items() if v is not None}}
