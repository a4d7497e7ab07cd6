"""Shapes edits: (source image, instruction, edited image) triples with a known answer.

The source is a shapes scene (``data/shapes.py``), the instruction comes from a small grammar,
and the edited scene is drawn by the same renderer, so every edit has a true output:

    recolour  "make the red circle blue"                 single or relation scenes
    swap      "turn the red circle into a square"         single or relation scenes
    move      "move the red circle to the left"           single scenes
    resize    "make the red circle large"                 single scenes
    remove    "remove the blue square"                    relation -> single
    add       "add a green triangle above the red circle" single (small object) -> relation

Every source and target scene has a caption in the shapes grammar (the text-to-image baseline
of ``transfusion eval --suite edit`` draws the target from it). A document is
``[Image(source), Text(instruction), Image(target)]`` of kind ``"edit"``: in training the
source is clean context and only the target (and the text) carries loss (``packing.arrange``).
Item i depends only on (split, i); the test split is drawn from another seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from transfusion.data.document import Document, Image, Text
from transfusion.data.shapes import (
    COLOURS,
    POSITION_CENTRES,
    POSITIONS,
    RELATION_DIRECTIONS,
    RELATION_SEPARATION,
    SHAPES,
    TRIANGLE_HEIGHT,
    Scene,
    ShapeObject,
    _inside,
    _new_object,
    _pick,
    _relation_scene,
    _shift_inside,
    _single_scene,
    caption_of,
    render,
)

EDIT_KINDS = ("recolour", "swap", "move", "resize", "remove", "add")
SPLIT_SEEDS = {"train": 20_241_001, "test": 20_241_002}
DEFAULT_LENGTHS = {"train": 4_000, "test": 500}
MOVE_PHRASES = {"left": "to the left", "right": "to the right", "top": "to the top", "bottom": "to the bottom",
                "center": "to the center"}


@dataclass
class Edit:
    """One editing example: ``target`` is ``source`` with the instruction carried out.

    ``changed``: index in ``target.objects`` of the object the instruction names (the added one
    for "add"; None for "remove"); ``removed``: the object taken away by "remove".
    """

    kind: str
    instruction: str
    source: Scene
    target: Scene
    changed: int | None
    removed: ShapeObject | None = None

    @property
    def target_caption(self) -> str:
        return caption_of(self.target)


def _name(obj: ShapeObject) -> str:
    return f"{obj.colour} {obj.shape}"


def _position_of(center: tuple[float, float]) -> str:
    return min(POSITIONS, key=lambda p: np.hypot(*np.subtract(center, POSITION_CENTRES[p])))


def _source(rng: np.random.Generator, kind: str) -> Scene:
    if kind in ("remove",) or (kind in ("recolour", "swap") and rng.random() < 0.4):
        return _relation_scene(rng)
    return _single_scene(rng, size="small" if kind == "add" else None)


def _recolour(rng, scene: Scene) -> Edit:
    i = int(rng.integers(len(scene.objects)))
    obj = scene.objects[i]
    taken = {o.colour for o in scene.objects}
    colour = _pick(rng, [c for c in COLOURS if c not in taken])
    objects = list(scene.objects)
    objects[i] = replace(obj, colour=colour)
    return Edit("recolour", f"make the {_name(obj)} {colour}", scene, replace(scene, objects=objects), i)


def _swap(rng, scene: Scene) -> Edit:
    i = int(rng.integers(len(scene.objects)))
    obj = scene.objects[i]
    shape = _pick(rng, [s for s in SHAPES if s != obj.shape])
    objects = list(scene.objects)
    # the new shape keeps the bounding box's centre (a triangle's centroid sits lower)
    objects[i] = _shift_inside(_reshaped(obj, shape))
    return Edit("swap", f"turn the {_name(obj)} into a {shape}", scene, replace(scene, objects=objects), i)


def _reshaped(obj: ShapeObject, shape: str) -> ShapeObject:
    """``obj`` drawn as ``shape`` in the same box: centroids differ only for triangles."""
    x, y = obj.center
    drop = obj.extent * TRIANGLE_HEIGHT / 6  # a triangle's centroid lies this far below its box centre
    y += (drop if shape == "triangle" else 0.0) - (drop if obj.shape == "triangle" else 0.0)
    return replace(obj, shape=shape, center=(x, y))


def _move(rng, scene: Scene) -> Edit:
    obj = scene.objects[0]
    position = _pick(rng, [p for p in POSITIONS if p != obj.position])
    offset = np.subtract(obj.center, POSITION_CENTRES[obj.position])  # the source's jitter, kept
    moved = _shift_inside(replace(obj, center=tuple(float(v) for v in np.add(POSITION_CENTRES[position], offset)),
                                  position=position))
    return Edit("move", f"move the {_name(obj)} {MOVE_PHRASES[position]}", scene, replace(scene, objects=[moved]), 0)


def _resize(rng, scene: Scene) -> Edit:
    obj = scene.objects[0]
    size = "small" if obj.size == "large" else "large"
    resized = _new_object(rng, obj.colour, obj.shape, size, obj.center, obj.position)
    if obj.shape == "triangle":  # keep the box centre: the centroid moves with the height
        dy = (resized.extent - obj.extent) * TRIANGLE_HEIGHT / 6
        resized = replace(resized, center=(resized.center[0], resized.center[1] + dy))
    resized = _shift_inside(resized)
    return Edit("resize", f"make the {_name(obj)} {size}", scene, replace(scene, objects=[resized]), 0)


def _remove(rng, scene: Scene) -> Edit:
    i = int(rng.integers(2))
    kept = scene.objects[1 - i]
    single = replace(kept, position=_position_of(kept.center))
    target = Scene("single", [single])
    return Edit("remove", f"remove the {_name(scene.objects[i])}", scene, target, None, removed=scene.objects[i])


def _add(rng, scene: Scene) -> Edit | None:
    """A new small object placed in a relation to the one there; None when it cannot fit."""
    existing = scene.objects[0]
    colour = _pick(rng, [c for c in COLOURS if c != existing.colour])
    shape = _pick(rng, SHAPES)
    relations = list(RELATION_DIRECTIONS)
    rng.shuffle(relations)
    for relation in relations:
        step = np.array(RELATION_DIRECTIONS[relation], dtype=float) * rng.uniform(*RELATION_SEPARATION)
        new = _new_object(rng, colour, shape, "small", np.add(existing.center, step))
        if _inside(new):
            target = Scene("relation", [new, replace(existing, position=None)], relation)
            return Edit("add", f"add a {colour} {shape} {relation} the {_name(existing)}", scene, target, 0)
    return None


_EDITORS = {"recolour": _recolour, "swap": _swap, "move": _move, "resize": _resize, "remove": _remove, "add": _add}


def sample_edit(rng: np.random.Generator, kind: str) -> Edit:
    """A random edit of ``kind`` (one of ``EDIT_KINDS``)."""
    if kind not in _EDITORS:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {', '.join(EDIT_KINDS)}")
    while True:  # only "add" can fail (no room beside the object); another source then
        edit = _EDITORS[kind](rng, _source(rng, kind))
        if edit is not None:
            return edit


def edit_document(edit: Edit, size: int = 32) -> Document:
    """``[Image(source), Text(instruction), Image(target)]``, kind "edit", meta["edit"]."""
    return Document([Image(render(edit.source, size)), Text(edit.instruction), Image(render(edit.target, size))],
                    kind="edit", meta={"edit": edit})


class EditsDataset(torch.utils.data.Dataset):
    """Deterministic shapes edits: item i depends only on (split, i); kinds in turn (i mod 6).

    Images: (3, size, size) float in [-1, 1]; ``meta["edit"]`` holds the ``Edit``.
    """

    def __init__(self, split: str = "train", size: int = 32, length: int | None = None, kinds=EDIT_KINDS):
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
        unknown = set(kinds) - set(EDIT_KINDS)
        if unknown:
            raise ValueError(f"unknown edit kinds {sorted(unknown)}; expected from {list(EDIT_KINDS)}")
        self.split, self.size, self.kinds = split, size, tuple(kinds)
        self.length = DEFAULT_LENGTHS[split] if length is None else length

    def __len__(self) -> int:
        return self.length

    def edit(self, index: int) -> Edit:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} edits")
        rng = np.random.default_rng((SPLIT_SEEDS[self.split], index))
        return sample_edit(rng, self.kinds[index % len(self.kinds)])

    def __getitem__(self, index: int) -> Document:
        return edit_document(self.edit(index), self.size)

