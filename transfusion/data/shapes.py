"""Shapes: a synthetic captioned-image dataset, its caption grammar and parser.

Flat-coloured circles, squares and triangles on black, drawn from a seed:

    single    "a large red circle on the left"      (one object, 60%)
    count     "three small yellow circles"          (2-3 identical small objects, 20%)
    relation  "a red circle above a blue square"    (two small objects, 20%)
    interleaved  "first a red circle, then a green triangle:" + one image per object

The deterministic reader that scores images and captions against scenes lives in
``metrics/shapes_reader.py``. Geometry is in fractions of the image side (one scene renders at
any size); an object's ``center`` is its area centroid, as the reader sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageDraw

from transfusion.data.document import Document, Image, Text

# Corners of the RGB cube (purple moved off blue): every pair, black included, is at
# least 210 apart, so nearest-palette reading survives heavy pixel noise.
PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 64, 255),
    "yellow": (255, 255, 0),
    "purple": (200, 0, 255),
    "white": (255, 255, 255),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                    "bottom": "at the bottom", "center": "in the center"}
POSITIONS = tuple(POSITION_PHRASES)
POSITION_CENTRES = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25),
                    "bottom": (0.5, 0.75), "center": (0.5, 0.5)}  # (x, y) fractions
# Unit vector (x, y) pointing from the second object of a relation to the first one.
RELATION_DIRECTIONS = {"above": (0, -1), "below": (0, 1), "left of": (-1, 0), "right of": (1, 0)}
RELATIONS = tuple(RELATION_DIRECTIONS)
NUMBER_WORDS = {2: "two", 3: "three"}

KIND_WEIGHTS = {"single": 0.6, "count": 0.2, "relation": 0.2, "interleaved": 0.2}
DEFAULT_KINDS = ("single", "count", "relation")
# validation: documents of the training distribution that neither training nor the test scores see (for
# tuning sampling settings before a test)
SPLIT_SEEDS = {"train": 20_240_001, "test": 20_240_002, "validation": 20_240_003}
DEFAULT_LENGTHS = {"train": 50_000, "test": 1_000, "validation": 1_000}
ATTRIBUTES = ("colour", "shape", "size", "position", "count", "relation", "exact")

# Geometry on the 32-pixel reference image, as fractions of the side.
_PX = 1 / 32
EXTENT_PIXELS = {"small": (8, 9, 10), "large": (14, 15, 16)}  # object width on 32 px
POSITION_JITTER = 2 * _PX
TRIANGLE_HEIGHT = 0.866  # height / width of an equilateral triangle
OBJECT_GAP = 2 * _PX  # empty space kept between the objects of a count scene
RELATION_SEPARATION = (13 * _PX, 20 * _PX)  # centre distance along the relation axis
RELATION_OFFSET = 3 * _PX  # largest centre offset across the relation axis



@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    size: str  # "small" | "large"
    center: tuple[float, float]  # (x, y) area centroid, fractions of the image side
    extent: float  # width, fraction of the image side
    position: str | None = None  # named region, for single scenes


@dataclass
class Scene:
    kind: str  # "single" | "count" | "relation"
    objects: list[ShapeObject]
    relation: str | None = None  # objects[0] <relation> objects[1]



@dataclass(frozen=True)
class CaptionAttributes:
    """What a caption states; None for what it does not (e.g. no position in counts)."""

    kind: str
    colours: tuple[str, ...]  # one per object named (two for relations)
    shapes: tuple[str, ...]
    size: str | None = None
    position: str | None = None
    count: int | None = None
    relation: str | None = None


# ---------------------------------------------------------------------------- scenes


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _bounds(obj: ShapeObject) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in fractions; a triangle's centroid sits 2/3 down."""
    x, y = obj.center
    half = obj.extent / 2
    if obj.shape == "triangle":
        height = obj.extent * TRIANGLE_HEIGHT
        return x - half, y - 2 * height / 3, x + half, y + height / 3
    return x - half, y - half, x + half, y + half


def _inside(obj: ShapeObject) -> bool:
    left, top, right, bottom = _bounds(obj)
    return left >= 0 and top >= 0 and right <= 1 and bottom <= 1


def _shift_inside(obj: ShapeObject) -> ShapeObject:
    left, top, right, bottom = _bounds(obj)
    dx = max(0.0, -left) - max(0.0, right - 1)
    dy = max(0.0, -top) - max(0.0, bottom - 1)
    return replace(obj, center=(obj.center[0] + dx, obj.center[1] + dy))


def _apart(a: ShapeObject, b: ShapeObject, gap: float) -> bool:
    """True when the bounding boxes of ``a`` and ``b`` are ``gap`` apart along some axis."""
    a_left, a_top, a_right, a_bottom = _bounds(a)
    b_left, b_top, b_right, b_bottom = _bounds(b)
    return max(b_left - a_right, a_left - b_right, b_top - a_bottom, a_top - b_bottom) >= gap


def _new_object(rng, colour, shape, size, center, position=None) -> ShapeObject:
    extent = _pick(rng, EXTENT_PIXELS[size]) * _PX
    return ShapeObject(colour, shape, size, tuple(float(v) for v in center), extent, position)


def _single_scene(rng: np.random.Generator, size: str | None = None) -> Scene:
    colour, shape = _pick(rng, COLOURS), _pick(rng, SHAPES)
    size = size or _pick(rng, SIZES)
    position = _pick(rng, POSITIONS)
    center = np.add(POSITION_CENTRES[position], rng.uniform(-POSITION_JITTER, POSITION_JITTER, 2))
    obj = _new_object(rng, colour, shape, size, center, position)
    return Scene("single", [_shift_inside(obj)])


def _count_scene(rng: np.random.Generator) -> Scene:
    count = int(rng.integers(2, 4))
    colour, shape = _pick(rng, COLOURS), _pick(rng, SHAPES)
    objects: list[ShapeObject] = []
    while len(objects) < count:  # rejection sampling: succeeds within a few tries
        candidate = _shift_inside(_new_object(rng, colour, shape, "small", rng.uniform(0, 1, 2)))
        if all(_apart(candidate, other, OBJECT_GAP) for other in objects):
            objects.append(candidate)
    return Scene("count", objects)


def _relation_scene(rng: np.random.Generator) -> Scene:
    first_colour, second_colour = (COLOURS[i] for i in rng.choice(len(COLOURS), 2, False))
    first_shape, second_shape = _pick(rng, SHAPES), _pick(rng, SHAPES)
    relation = _pick(rng, RELATIONS)
    direction = np.array(RELATION_DIRECTIONS[relation], dtype=float)
    across = direction[::-1]
    while True:  # rejection sampling: keep the pair only when both objects fit unmoved
        middle = rng.uniform(0.2, 0.8, 2)
        half_step = (direction * rng.uniform(*RELATION_SEPARATION)
                     + across * rng.uniform(-RELATION_OFFSET, RELATION_OFFSET)) / 2
        first = _new_object(rng, first_colour, first_shape, "small", middle + half_step)
        second = _new_object(rng, second_colour, second_shape, "small", middle - half_step)
        if _inside(first) and _inside(second):
            return Scene("relation", [first, second], relation)


def sample_scene(rng: np.random.Generator, kind: str = "single") -> Scene:
    """A random scene of ``kind`` ("single" | "count" | "relation")."""
    builders = {"single": _single_scene, "count": _count_scene, "relation": _relation_scene}
    if kind not in builders:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {sorted(builders)}")
    return builders[kind](rng)


def render(scene: Scene, size: int = 32) -> torch.Tensor:
    """Draw ``scene`` with flat colours on black. Returns (3, size, size) float in [-1, 1]."""
    canvas = PILImage.new("RGB", (size, size))
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        left, top, right, bottom = (round(v * size) for v in _bounds(obj))
        fill = PALETTE[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([left, top, right - 1, bottom - 1], fill=fill)
        elif obj.shape == "square":
            draw.rectangle([left, top, right - 1, bottom - 1], fill=fill)
        else:
            apex = ((left + right - 1) / 2, top)
            draw.polygon([(left, bottom - 1), (right - 1, bottom - 1), apex], fill=fill)
    rgb = torch.from_numpy(np.array(canvas, dtype=np.float32))  # (size, size, 3) in 0..255
    return rgb.permute(2, 0, 1) / 127.5 - 1


# --------------------------------------------------------------------------- captions


def _describe(obj: ShapeObject) -> str:
    return f"a {obj.colour} {obj.shape}"


OPPOSITE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
# how a scene is put in words: the captions training shows, and the same facts in words it never
# shows (post-training's guard against a model that learnt only the usual phrasing)
WORDINGS = {
    "caption": {"single": "a {size} {colour} {shape} {where}", "count": "{number} {size} {colour} {shape}s",
                "relation": "{first} {relation} {second}"},
    "paraphrase": {"single": "a {colour} {shape}, {size}, {where}", "count": "{number} {colour} {shape}s, all {size}",
                   "relation": "{second} {opposite} {first}"},
}


def _worded(scene: Scene, wording: str) -> str:
    objects = scene.objects
    first = objects[0]
    return WORDINGS[wording][scene.kind].format(
        size=first.size, colour=first.colour, shape=first.shape, where=POSITION_PHRASES.get(first.position),
        number=NUMBER_WORDS.get(len(objects)), first=_describe(first), second=_describe(objects[-1]),
        relation=scene.relation, opposite=OPPOSITE.get(scene.relation))


def caption_of(scene: Scene) -> str:
    """The caption of a single, count or relation scene (lower case, no final period)."""
    return _worded(scene, "caption")


def paraphrase_of(scene: Scene) -> str:
    """The caption of ``scene`` in words training never shows: the size after the object, a count
    as "all", a relation from its second object. It says the same; the reader scores it against
    the scene."""
    return _worded(scene, "paraphrase")


def attributes_of(scene: Scene) -> CaptionAttributes:
    """The attributes the caption of ``scene`` states, read from the scene itself."""
    colours = tuple(obj.colour for obj in scene.objects)
    shapes = tuple(obj.shape for obj in scene.objects)
    first = scene.objects[0]
    if scene.kind == "single":
        return CaptionAttributes("single", colours, shapes, first.size, first.position)
    if scene.kind == "count":
        return CaptionAttributes("count", colours[:1], shapes[:1], first.size, count=len(colours))
    return CaptionAttributes("relation", colours, shapes, relation=scene.relation)


def _alternatives(words) -> str:
    return "(" + "|".join(re.escape(w) for w in words) + ")"


_COLOUR, _SHAPE, _SIZE = _alternatives(COLOURS), _alternatives(SHAPES), _alternatives(SIZES)
_SINGLE_PATTERN = re.compile(
    rf"a {_SIZE} {_COLOUR} {_SHAPE} {_alternatives(POSITION_PHRASES.values())}"
)
_COUNT_PATTERN = re.compile(rf"{_alternatives(NUMBER_WORDS.values())} {_SIZE} {_COLOUR} {_SHAPE}s")
_RELATION_PATTERN = re.compile(
    rf"a {_COLOUR} {_SHAPE} {_alternatives(RELATIONS)} a {_COLOUR} {_SHAPE}"
)
_POSITION_OF_PHRASE = {phrase: position for position, phrase in POSITION_PHRASES.items()}
_NUMBER_OF_WORD = {word: number for number, word in NUMBER_WORDS.items()}


def parse_caption(text) -> CaptionAttributes | None:
    """Attributes of a caption in the dataset's grammar; None (never an error) otherwise.

    Surrounding whitespace and upper case are forgiven; anything else must match exactly.
    """
    if not isinstance(text, str):
        return None
    text = text.strip().lower()
    if match := _SINGLE_PATTERN.fullmatch(text):
        size, colour, shape, phrase = match.groups()
        return CaptionAttributes("single", (colour,), (shape,), size, _POSITION_OF_PHRASE[phrase])
    if match := _COUNT_PATTERN.fullmatch(text):
        number, size, colour, shape = match.groups()
        return CaptionAttributes("count", (colour,), (shape,), size, count=_NUMBER_OF_WORD[number])
    if match := _RELATION_PATTERN.fullmatch(text):
        first_colour, first_shape, relation, second_colour, second_shape = match.groups()
        colours, shapes = (first_colour, second_colour), (first_shape, second_shape)
        return CaptionAttributes("relation", colours, shapes, relation=relation)
    return None


# ---------------------------------------------------------------------------- dataset


def _check_split(split: str) -> None:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")


def _rng(split: str, index: int) -> np.random.Generator:
    _check_split(split)
    return np.random.default_rng((SPLIT_SEEDS[split], index))


def interleaved_document(rng_or_index, size: int = 32, split: str = "train") -> Document:
    """A text "first a red circle, then a green triangle:" followed by one image per object.

    rng_or_index: a numpy Generator, or an index drawn deterministically from ``split``
    (equal to ShapesDataset(split, size, kinds=["interleaved"])[index]).
    Each image is a single-object scene of a large object; meta["scenes"] holds them.
    Images: (3, size, size) float in [-1, 1].
    """
    rng = rng_or_index
    if not isinstance(rng, np.random.Generator):
        rng = _rng(split, int(rng_or_index))
    scenes = [_single_scene(rng, size="large") for _ in range(int(rng.integers(2, 4)))]
    text = "first " + ", then ".join(_describe(scene.objects[0]) for scene in scenes) + ":"
    images = [Image(render(scene, size)) for scene in scenes]
    return Document([Text(text), *images], kind="interleaved", meta={"scenes": scenes})


class ShapesDataset(torch.utils.data.Dataset):
    """Deterministic shapes documents: item i depends only on (split, i).

    kinds: any of "single", "count", "relation" (caption + image pairs, meta["scene"])
    and "interleaved"; drawn with KIND_WEIGHTS renormalised over the chosen kinds.
    Images: (3, size, size) float in [-1, 1].
    """

    def __init__(self, split: str = "train", size: int = 32, length: int | None = None,
                 kinds=None):
        _check_split(split)
        self.kinds = tuple(kinds or DEFAULT_KINDS)
        unknown = set(self.kinds) - set(KIND_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; expected from {list(KIND_WEIGHTS)}")
        weights = np.array([KIND_WEIGHTS[kind] for kind in self.kinds])
        self.kind_probabilities = weights / weights.sum()
        self.split = split
        self.size = size
        self.length = DEFAULT_LENGTHS[split] if length is None else length

    def __len__(self) -> int:
        return self.length

    def _kind(self, rng: np.random.Generator) -> str:
        if len(self.kinds) == 1:
            return self.kinds[0]
        return self.kinds[rng.choice(len(self.kinds), p=self.kind_probabilities)]

    def indices_of(self, kinds) -> list[int]:
        """The indices of the documents of ``kinds``, in order, found without drawing them."""
        unknown = set(kinds) - set(self.kinds)
        if unknown:
            raise ValueError(f"this dataset draws {list(self.kinds)}, not {sorted(unknown)}")
        return [i for i in range(self.length) if self._kind(_rng(self.split, i)) in kinds]

    def __getitem__(self, index: int) -> Document:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        rng = _rng(self.split, index)
        kind = self._kind(rng)
        if kind == "interleaved":
            return interleaved_document(rng, self.size)
        scene = sample_scene(rng, kind)
        return Document.pair(caption_of(scene), render(scene, self.size), scene=scene)
