"""The attribute reader: scores any image against a shapes caption, and captions against scenes.

Deterministic, no learning: ``read_image`` finds the objects in an image (generated ones
included), ``score(pixels, caption)`` says which stated attributes the image shows,
``score_caption(text, scene)`` parses a generated caption and compares it with the truth,
and ``summarise`` turns lists of such scores into accuracies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import torch

from transfusion.data.shapes import (
    _PX,
    ATTRIBUTES,
    COLOURS,
    PALETTE,
    POSITION_CENTRES,
    POSITIONS,
    RELATION_DIRECTIONS,
    CaptionAttributes,
    Scene,
    attributes_of,
    parse_caption,
)

# Reader thresholds.
MIN_OBJECT_AREA = 0.01  # components under this fraction of the image are specks
LARGE_EXTENT = 12 * _PX  # widths above this are "large"
SQUARE_FILL = 0.9  # pixels / bounding-box area: square ~1.0, circle ~0.8, triangle ~0.5
TRIANGLE_DROP = 0.08  # (centroid y - box centre y) / height: triangle ~1/6, others 0


@dataclass(frozen=True)
class DetectedObject:
    colour: str
    shape: str
    size: str
    position: str  # nearest region centre
    centroid: tuple[float, float]  # (x, y), fractions of the image side
    area: int  # pixels


def _to_rgb(pixels) -> np.ndarray:
    """(3, H, W) float tensor in [-1, 1] or (H, W, 3) uint8 array -> (H, W, 3) float 0..255."""
    if isinstance(pixels, torch.Tensor):
        if pixels.ndim != 3 or pixels.shape[0] != 3:
            raise ValueError(f"expected pixels of shape (3, H, W), got {tuple(pixels.shape)}")
        pixels = ((pixels.detach().float().cpu() + 1) * 127.5).permute(1, 2, 0).numpy()
    rgb = np.asarray(pixels, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) array, got shape {rgb.shape}")
    return rgb


def _colour_labels(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W) int: 0 for background, i + 1 for COLOURS[i] (nearest colour)."""
    references = np.array([(0, 0, 0), *PALETTE.values()], dtype=np.float32)  # (7, 3)
    distances = ((rgb[:, :, None, :] - references) ** 2).sum(-1)  # (H, W, 7)
    return distances.argmin(-1)


def _components(labels: np.ndarray) -> np.ndarray:
    """8-connected regions of one colour label: (H, W) -> (H, W) region ids, -1 on background.

    Each pixel repeatedly takes the smallest id among its same-colour neighbours until
    nothing changes; the number of rounds is the widest object's size, fine up to ~64 px.
    """
    height, width = labels.shape
    background = height * width
    ids = np.where(labels > 0, np.arange(background).reshape(height, width), background)
    padded_labels = np.pad(labels, 1)
    while True:
        padded_ids = np.pad(ids, 1, constant_values=background)
        smallest = ids
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                window = (slice(1 + dy, 1 + dy + height), slice(1 + dx, 1 + dx + width))
                same_colour = (padded_labels[window] == labels) & (labels > 0)
                smallest = np.where(same_colour, np.minimum(smallest, padded_ids[window]), smallest)
        if np.array_equal(smallest, ids):
            return np.where(labels > 0, ids, -1)
        ids = smallest


def _shape_of(ys: np.ndarray, xs: np.ndarray) -> str:
    """Classify one component from its pixel coordinates (ys, xs: (N,))."""
    height = ys.max() - ys.min() + 1
    width = xs.max() - xs.min() + 1
    drop = (ys.mean() - (ys.min() + ys.max()) / 2) / height  # mass below the box centre
    if drop > TRIANGLE_DROP:
        return "triangle"
    return "square" if len(ys) / (height * width) > SQUARE_FILL else "circle"


def _nearest_position(centroid: tuple[float, float]) -> str:
    return min(POSITIONS, key=lambda p: np.hypot(*np.subtract(centroid, POSITION_CENTRES[p])))


def read_image(pixels) -> list[DetectedObject]:
    """Objects in an image, largest first.

    pixels: (3, H, W) float tensor in [-1, 1], or (H, W, 3) uint8 numpy array.
    Each pixel takes the nearest of black and the palette; same-colour 8-connected
    regions under MIN_OBJECT_AREA of the image are dropped as noise.
    """
    labels = _colour_labels(_to_rgb(pixels))
    height, width = labels.shape
    ids = _components(labels)
    objects = []
    for region in np.unique(ids[ids >= 0]):
        ys, xs = np.nonzero(ids == region)
        if len(ys) < MIN_OBJECT_AREA * height * width:
            continue
        centroid = ((xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height)
        extent = max((xs.max() - xs.min() + 1) / width, (ys.max() - ys.min() + 1) / height)
        objects.append(DetectedObject(
            colour=COLOURS[labels[ys[0], xs[0]] - 1],
            shape=_shape_of(ys, xs),
            size="large" if extent > LARGE_EXTENT else "small",
            position=_nearest_position(centroid),
            centroid=(float(centroid[0]), float(centroid[1])),
            area=len(ys),
        ))
    return sorted(objects, key=lambda obj: -obj.area)


# ---------------------------------------------------------------------------- scoring


def _reference(caption_or_scene) -> CaptionAttributes:
    if isinstance(caption_or_scene, CaptionAttributes):
        return caption_or_scene
    if isinstance(caption_or_scene, Scene):
        return attributes_of(caption_or_scene)
    attributes = parse_caption(caption_or_scene)
    if attributes is None:
        raise ValueError(f"reference caption {caption_or_scene!r} is not in the shapes grammar")
    return attributes


def _in_relation(first: tuple[float, float], second: tuple[float, float], relation: str) -> bool:
    """True when ``first`` lies mostly in the relation's direction from ``second``."""
    dx, dy = np.subtract(first, second)
    along_x, along_y = RELATION_DIRECTIONS[relation]
    along = dx * along_x + dy * along_y
    across = abs(dx * along_y) + abs(dy * along_x)
    return bool(along > across)


def _majority(values: list[str], wanted: str) -> bool:
    return sum(value == wanted for value in values) * 2 > len(values)


def _objects_asked(reference: CaptionAttributes) -> int:
    """How many objects a caption asks for: one, its count, or two for a relation."""
    return {"single": 1, "count": reference.count, "relation": 2}[reference.kind]


def _score_single(objects: list[DetectedObject], reference: CaptionAttributes) -> dict:
    target = objects[0] if objects else None  # the largest object
    wanted = {"colour": reference.colours[0], "shape": reference.shapes[0],
              "size": reference.size, "position": reference.position}
    result = {key: target is not None and getattr(target, key) == value
              for key, value in wanted.items()}
    return {**result, "exact": all(result.values()) and len(objects) == _objects_asked(reference)}


def _score_count(objects: list[DetectedObject], reference: CaptionAttributes) -> dict:
    wanted = (reference.colours[0], reference.shapes[0])
    matches = [obj for obj in objects if (obj.colour, obj.shape) == wanted]
    size = bool(matches) and all(obj.size == reference.size for obj in matches)
    count = len(matches) == reference.count
    return {
        "colour": _majority([obj.colour for obj in objects], reference.colours[0]),
        "shape": _majority([obj.shape for obj in objects], reference.shapes[0]),
        "size": size,
        "count": count,
        "exact": count and size and len(objects) == _objects_asked(reference),
    }


def _score_relation(objects: list[DetectedObject], reference: CaptionAttributes) -> dict:
    first, second = (
        next((obj for obj in objects if (obj.colour, obj.shape) == wanted), None)
        for wanted in zip(reference.colours, reference.shapes)
    )
    colour = all(colour in {obj.colour for obj in objects} for colour in reference.colours)
    shape = first is not None and second is not None
    relation = shape and _in_relation(first.centroid, second.centroid, reference.relation)
    exact = colour and relation and len(objects) == _objects_asked(reference)
    return {"colour": colour, "shape": shape, "relation": relation, "exact": exact}


def score(pixels, caption) -> dict[str, bool | None]:
    """Whether an image shows what a caption (or Scene) says; None for unstated attributes.

    pixels: as for ``read_image``. Rules by caption kind:
      single:   colour, shape, size and position of the largest detected object;
                exact = all four right and no other object.
      count:    colour / shape = more than half the detected objects have it;
                count = number of objects with the stated colour and shape;
                size = all of those have the stated size;
                exact = count and size right and no other object.
      relation: colour = objects of both colours exist; shape = objects of both
                (colour, shape) pairs exist; relation = the largest of each pair lies in
                the stated direction (further along the axis than across it);
                exact = all three right and no other object.
    Every kind also gets ``objects``: the image holds as many objects as the caption asks for.
    """
    reference = _reference(caption)
    scorers = {"single": _score_single, "count": _score_count, "relation": _score_relation}
    objects = read_image(pixels)
    return {**dict.fromkeys(ATTRIBUTES), **scorers[reference.kind](objects, reference),
            "objects": len(objects) == _objects_asked(reference)}


_CONVERSE = {"below": "above", "right of": "left of"}


def _canonical(attributes: CaptionAttributes) -> CaptionAttributes:
    """A relation stated with "below" / "right of" turned around to "above" / "left of"."""
    if attributes.kind != "relation" or attributes.relation not in _CONVERSE:
        return attributes
    return replace(attributes, colours=attributes.colours[::-1], shapes=attributes.shapes[::-1],
                   relation=_CONVERSE[attributes.relation])


def score_caption(generated_text, reference) -> dict[str, bool | None]:
    """Compare a generated caption with a reference caption, Scene or CaptionAttributes.

    Each attribute the reference states is True when the parsed caption states the same;
    None where the reference is silent; a caption that does not parse gets False
    everywhere. colour and shape compare what is named, in any order; relation compares
    the whole statement in one canonical direction, so "a red circle below a blue square"
    matches "a blue square above a red circle"; exact = the same statement.
    """
    wanted = _canonical(_reference(reference))
    got = parse_caption(generated_text)
    got = None if got is None else _canonical(got)
    result: dict[str, bool | None] = dict.fromkeys(ATTRIBUTES)
    for key in ATTRIBUTES[:-1]:
        stated = getattr(wanted, _FIELDS[key])
        if stated is None:
            continue
        if got is None:
            result[key] = False
        elif key in ("colour", "shape"):
            result[key] = Counter(getattr(got, _FIELDS[key])) == Counter(stated)
        elif key == "relation":
            result[key] = (got.colours, got.shapes, got.relation) == (wanted.colours, wanted.shapes, stated)
        else:
            result[key] = getattr(got, _FIELDS[key]) == stated
    result["exact"] = got == wanted
    return result


_FIELDS = {"colour": "colours", "shape": "shapes", "size": "size", "position": "position", "count": "count",
           "relation": "relation"}


def summarise(scores: list[dict[str, bool | None]]) -> dict[str, float]:
    """Accuracy per attribute over the entries where it is not None (others omitted)."""
    summary = {}
    for key in ATTRIBUTES:
        judged = [s[key] for s in scores if s.get(key) is not None]
        if judged:
            summary[key] = sum(judged) / len(judged)
    return summary


def score_interleaved(images: list, scenes: list[Scene]) -> dict:
    """Score the images generated after an interleaved prompt ("first a red circle, then a
    blue square:") against the phrases: image i belongs to phrase i.

    images: what the model drew, in order; scenes: one single-object scene per phrase.
    Returns per phrase whether its image exists and has the phrase's colour / shape (the
    largest object read), whether the image count is right, and whether every image has its
    own phrase's colour and shape in order (``sequence``). ``later_first_colour``: for each
    image after the first whose phrase's colour differs from the first phrase's, whether it
    took the first phrase's colour instead (an image conditioned on the wrong phrase).
    """
    wanted = [scene.objects[0] for scene in scenes]
    tops = [(read_image(pixels) or [None])[0] for pixels in images[: len(wanted)]]
    tops += [None] * (len(wanted) - len(tops))
    colour = [top is not None and top.colour == w.colour for top, w in zip(tops, wanted)]
    shape = [top is not None and top.shape == w.shape for top, w in zip(tops, wanted)]
    later_first = [top.colour == wanted[0].colour for top, w in zip(tops[1:], wanted[1:])
                   if top is not None and w.colour != wanted[0].colour]
    return {"colour": colour, "shape": shape, "count": len(images) == len(wanted),
            "sequence": all(colour) and all(shape) and len(images) == len(wanted), "later_first_colour": later_first}


def summarise_interleaved(scores: list[dict]) -> dict[str, float]:
    """Accuracies of ``score_interleaved`` results: per image (colour, shape; a missing image is
    wrong), colour by image index (``colour_image_1`` ...), per document (count, sequence), and
    the share of later images that took the first phrase's colour."""
    def share(values: list) -> float:
        return sum(values) / max(len(values), 1)

    def flat(key: str) -> list:
        return [v for s in scores for v in (s[key] if isinstance(s[key], list) else [s[key]])]

    summary = {key: share(flat(key)) for key in ("colour", "shape", "count", "sequence", "later_first_colour")}
    for i in range(max(len(s["colour"]) for s in scores)):
        summary[f"colour_image_{i + 1}"] = share([s["colour"][i] for s in scores if i < len(s["colour"])])
    return summary
