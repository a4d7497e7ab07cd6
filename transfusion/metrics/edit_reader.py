"""Scoring an edited image against the true edit, with the attribute reader.

``score_edit(pixels, edit)`` reads the objects in an output image (``shapes_reader.read_image``)
and returns

    success       the requested change holds: the recoloured / reshaped / moved / resized /
                  added object is there with its new attribute (and in its stated relation),
                  the old version or the removed object is gone
    preservation  every attribute the instruction did not name is unchanged: each object of
                  the true output is found with its colour, shape, size and place (centroid
                  within ``PLACE_TOLERANCE``), leaving out only the named attribute of the named
                  object, and nothing else is in the image
    pixel_error   mean squared error to the true edited image, in [-1, 1] pixel units

so that returning the source unchanged scores full preservation and no success.
"""

from __future__ import annotations

import numpy as np
import torch

from transfusion.data.edits import EDIT_KINDS, Edit
from transfusion.data.shapes import _PX, ShapeObject
from transfusion.metrics.shapes_reader import DetectedObject, _in_relation, read_image

PLACE_TOLERANCE = 3 * _PX  # a centroid this close to the truth's is in the same place
# the attribute each edit kind changes (what preservation does not ask to stay)
NAMED = {"recolour": "colour", "swap": "shape", "move": "place", "resize": "size"}


def _same(d: DetectedObject, o: ShapeObject, skip: str | None = None) -> bool:
    checks = {"colour": d.colour == o.colour, "shape": d.shape == o.shape, "size": d.size == o.size,
              "place": float(np.hypot(*np.subtract(d.centroid, o.center))) <= PLACE_TOLERANCE}
    if skip == "size":  # a resized object grows about its box: its region, not its centroid, must stay
        checks["place"] = d.position == o.position
    return all(ok for name, ok in checks.items() if name != skip)


def _has(objects: list[DetectedObject], colour: str, shape: str) -> list[DetectedObject]:
    return [d for d in objects if (d.colour, d.shape) == (colour, shape)]


def _success(edit: Edit, objects: list[DetectedObject]) -> bool:
    src = edit.source.objects
    if edit.kind == "remove":
        return not _has(objects, edit.removed.colour, edit.removed.shape)
    new = edit.target.objects[edit.changed]
    if edit.kind == "add":
        other = edit.target.objects[1]
        return any(_in_relation(a.centroid, b.centroid, edit.target.relation)
                   for a in _has(objects, new.colour, new.shape) for b in _has(objects, other.colour, other.shape))
    old = src[edit.changed]
    found = _has(objects, new.colour, new.shape)
    if edit.kind in ("recolour", "swap"):
        return bool(found) and not _has(objects, old.colour, old.shape)
    if edit.kind == "move":
        return any(d.position == new.position for d in found)
    return any(d.size == new.size for d in found)  # resize


def _preserved(edit: Edit, objects: list[DetectedObject]) -> bool:
    wanted = [(o, NAMED.get(edit.kind) if i == edit.changed else None)
              for i, o in enumerate(edit.target.objects) if not (edit.kind == "add" and i == edit.changed)]
    unused = list(objects)
    for o, skip in wanted:
        match = next((d for d in unused if _same(d, o, skip)), None)
        if match is None:
            return False
        unused.remove(match)
    if edit.kind == "add":  # the added object is the change itself, not an extra
        new = edit.target.objects[edit.changed]
        added = _has(unused, new.colour, new.shape)
        if added:
            unused.remove(added[0])
    if edit.kind == "remove":  # a failed removal is a failure of success, not of preservation
        unused = [d for d in unused if (d.colour, d.shape) != (edit.removed.colour, edit.removed.shape)]
    return not unused


def pixel_error(output: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean squared error of an output (3, H, W) to the true edited image, in [-1, 1] units."""
    return float((output.float().cpu() - truth.float().cpu()).pow(2).mean())


def score_edit(pixels: torch.Tensor, edit: Edit, truth: torch.Tensor | None = None) -> dict:
    """Success, preservation (and with ``truth`` (3, H, W), pixel error) of an output (3, H, W) in [-1, 1]."""
    objects = read_image(pixels)
    out = {"kind": edit.kind, "success": _success(edit, objects), "preservation": _preserved(edit, objects)}
    if truth is not None:
        out["pixel_error"] = pixel_error(pixels, truth)
    return out


def summarise_edits(scores: list[dict]) -> dict[str, dict[str, float]]:
    """Per edit kind (and ``all``): mean success, preservation and pixel error, and the count."""
    out = {}
    for kind in (*EDIT_KINDS, "all"):
        rows = [s for s in scores if kind in ("all", s["kind"])]
        if not rows:
            continue
        out[kind] = {"n": len(rows), "success": float(np.mean([s["success"] for s in rows])),
                     "preservation": float(np.mean([s["preservation"] for s in rows]))}
        if all("pixel_error" in s for s in rows):
            out[kind]["pixel_error"] = float(np.mean([s["pixel_error"] for s in rows]))
    return out
