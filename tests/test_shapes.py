import numpy as np
import pytest
import torch

from transfusion.data.shapes import (
    ATTRIBUTES,
    CaptionAttributes,
    Scene,
    ShapeObject,
    ShapesDataset,
    attributes_of,
    caption_of,
    interleaved_document,
    parse_caption,
    render,
    sample_scene,
)
from transfusion.metrics.shapes_reader import (
    read_image,
    score,
    score_caption,
    score_interleaved,
    summarise,
    summarise_interleaved,
)

_RED_CIRCLE_LEFT = Scene(
    "single", [ShapeObject("red", "circle", "large", (0.25, 0.5), extent=0.5, position="left")]
)


@pytest.fixture(scope="module")
def test_items():
    dataset = ShapesDataset("test")
    return [dataset[i] for i in range(300)]


def test_items_are_deterministic_and_splits_differ():
    first, again = ShapesDataset("train")[7], ShapesDataset("train")[7]
    assert first.caption == again.caption
    assert torch.equal(first.images[0].pixels, again.images[0].pixels)
    train = [ShapesDataset("train")[i] for i in range(20)]
    test = [ShapesDataset("test")[i] for i in range(20)]
    assert [d.caption for d in train] != [d.caption for d in test]


def test_items_are_pairs_in_range(test_items):
    for document in test_items[:20]:
        pixels = document.images[0].pixels
        assert document.kind == "pair" and pixels.shape == (3, 32, 32)
        assert pixels.dtype == torch.float32
        assert pixels.min() >= -1 and pixels.max() <= 1
        stated = parse_caption(document.caption)  # the caption says what the pixels show
        seen = read_image(pixels)
        assert stated is not None and len(seen) == (stated.count or len(stated.colours)), document.caption
        assert {o.colour for o in seen} == set(stated.colours) and {o.shape for o in seen} == set(stated.shapes)
    kinds = [d.meta["scene"].kind for d in test_items]
    assert 0.45 < kinds.count("single") / len(kinds) < 0.75
    assert {"count", "relation"} <= set(kinds)


def test_reader_scores_the_datasets_own_images(test_items):
    summary = summarise([score(d.images[0].pixels, d.caption) for d in test_items])
    print("reader accuracy, 300 test images:", summary)
    assert set(summary) == set(ATTRIBUTES)
    assert all(accuracy >= 0.95 for accuracy in summary.values()), summary


def test_reader_survives_pixel_noise(test_items):
    generator = torch.Generator().manual_seed(0)
    scores = []
    for document in test_items:
        pixels = document.images[0].pixels
        noisy = pixels + 0.1 * torch.randn(pixels.shape, generator=generator)
        scores.append(score(noisy, document.caption))
    summary = summarise(scores)
    print("reader accuracy, noise std 0.1:", summary)
    assert summary["colour"] >= 0.9 and summary["position"] >= 0.9, summary


@pytest.mark.parametrize("size", [48, 64])
def test_reader_works_at_other_image_sizes(size):
    dataset = ShapesDataset("test", size=size)
    documents = [dataset[i] for i in range(30)]
    summary = summarise([score(d.images[0].pixels, d.caption) for d in documents])
    assert summary["exact"] >= 0.95, summary


def test_reader_accepts_uint8_arrays():
    pixels = render(_RED_CIRCLE_LEFT)
    array = ((pixels.permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert read_image(array) == read_image(pixels)
    (detected,) = read_image(array)
    seen = (detected.colour, detected.shape, detected.size, detected.position)
    assert seen == ("red", "circle", "large", "left")


def test_parse_caption_round_trips_every_kind():
    rng = np.random.default_rng(0)
    for kind in ("single", "count", "relation"):
        for _ in range(30):
            scene = sample_scene(rng, kind)
            assert parse_caption(caption_of(scene)) == attributes_of(scene)
    assert parse_caption("a large red circle on the left") == CaptionAttributes(
        "single", ("red",), ("circle",), size="large", position="left"
    )
    assert parse_caption("three small yellow circles") == CaptionAttributes(
        "count", ("yellow",), ("circle",), size="small", count=3
    )
    assert parse_caption("a yellow triangle left of a green circle") == CaptionAttributes(
        "relation", ("yellow", "green"), ("triangle", "circle"), relation="left of"
    )


@pytest.mark.parametrize("garbage", [
    "a a red red", "", "zzz", None, 42, "a large red circle", "two small green triangle",
    "four small red circles", "a red circle above a red", "a large red circle on the left a",
])
def test_parse_caption_returns_none_for_garbage(garbage):
    assert parse_caption(garbage) is None


def test_wrong_caption_scores_false():
    pixels = render(_RED_CIRCLE_LEFT)
    assert score(pixels, "a large red circle on the left")["exact"]
    wrong_colour = score(pixels, "a large blue circle on the left")
    assert wrong_colour["colour"] is False and wrong_colour["exact"] is False
    assert wrong_colour["shape"] and wrong_colour["size"] and wrong_colour["position"]
    assert wrong_colour["count"] is None and wrong_colour["relation"] is None
    assert score(pixels, "a large red circle on the right")["position"] is False
    assert score(pixels, "a small red square on the left")["size"] is False


def test_relation_and_count_scores_check_what_they_state():
    scene = sample_scene(np.random.default_rng(3), "relation")
    first, second = scene.objects
    pixels = render(scene)
    assert score(pixels, scene)["exact"]
    swapped = f"a {second.colour} {second.shape} {scene.relation} a {first.colour} {first.shape}"
    assert score(pixels, swapped)["relation"] is False
    assert score(pixels, swapped)["size"] is None
    counted = sample_scene(np.random.default_rng(4), "count")
    wrong_count = {2: "three", 3: "two"}[len(counted.objects)]
    obj = counted.objects[0]
    result = score(render(counted), f"{wrong_count} small {obj.colour} {obj.shape}s")
    assert result["count"] is False and result["colour"] and result["position"] is None


def test_blank_image_scores_false():
    blank = -torch.ones(3, 32, 32)
    assert read_image(blank) == []
    assert not any(score(blank, "a small red square at the top").values())


def test_score_caption_compares_attributes():
    reference = "a large red circle on the left"
    assert score_caption(reference, _RED_CIRCLE_LEFT) == {
        "colour": True, "shape": True, "size": True, "position": True,
        "count": None, "relation": None, "exact": True,
    }
    wrong_colour = score_caption("a large blue circle on the left", reference)
    assert wrong_colour == {"colour": False, "shape": True, "size": True, "position": True,
                            "count": None, "relation": None, "exact": False}
    garbled = score_caption("a a red red", "two small green triangles")
    assert garbled == {"colour": False, "shape": False, "size": False, "position": None,
                       "count": False, "relation": None, "exact": False}
    with pytest.raises(ValueError, match="not in the shapes grammar"):
        score_caption("a red circle", "zzz")


def test_summarise_skips_unstated_attributes():
    summary = summarise([{"colour": True, "count": None}, {"colour": False, "count": True}])
    assert summary == {"colour": 0.5, "count": 1.0}


def test_interleaved_documents_match_their_text():
    dataset = ShapesDataset("test", kinds=["interleaved"])
    for index in range(20):
        document = interleaved_document(index, split="test")
        assert document.caption == dataset[index].caption
        assert document.kind == "interleaved" and 2 <= len(document.images) <= 3
        assert document.caption.startswith("first ") and document.caption.endswith(":")
        named = document.caption[len("first "):-1].split(", then ")
        assert len(named) == len(document.images) == len(document.meta["scenes"])
        for description, image in zip(named, document.images):
            (detected,) = read_image(image.pixels)
            assert description == f"a {detected.colour} {detected.shape}"


def test_interleaved_scores_each_image_against_its_own_phrase():
    three = next(d for d in (interleaved_document(i, split="test") for i in range(50)) if len(d.images) == 3
                 and len({s.objects[0].colour for s in d.meta["scenes"]}) == 3)
    images, scenes = [im.pixels for im in three.images], three.meta["scenes"]
    right = score_interleaved(images, scenes)
    assert right["colour"] == right["shape"] == [True] * 3 and right["count"] and right["sequence"]
    assert right["later_first_colour"] == [False, False]
    # every image drawn for the first phrase: colours wrong after it, and they follow the first phrase
    first = score_interleaved([images[0]] * 3, scenes)
    assert first["colour"] == [True, False, False] and not first["sequence"] and first["later_first_colour"] == [True, True]
    # the order swapped, one image missing, one too many, a blank
    assert score_interleaved(images[::-1], scenes)["colour"] == [False, True, False]
    short = score_interleaved(images[:2], scenes)
    assert short["colour"] == [True, True, False] and not short["count"]
    extra = score_interleaved(images + images[:1], scenes)
    assert extra["colour"] == [True] * 3 and not extra["count"] and not extra["sequence"]
    assert score_interleaved([torch.full_like(images[0], -1.0)] + images[1:], scenes)["colour"] == [False, True, True]
    summary = summarise_interleaved([right, first, short])
    assert summary["colour"] == pytest.approx(6 / 9) and summary["count"] == pytest.approx(2 / 3)
    assert summary["colour_image_1"] == 1 and summary["colour_image_3"] == pytest.approx(1 / 3)
    assert summary["later_first_colour"] == pytest.approx(2 / 5)  # the missing image has no colour to count


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown split"):
        ShapesDataset("valid")
    with pytest.raises(ValueError, match="unknown kinds"):
        ShapesDataset(kinds=["single", "video"])
    with pytest.raises(IndexError):
        ShapesDataset("test", length=5)[5]
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        read_image(torch.zeros(1, 32, 32))


def test_score_caption_accepts_the_converse_relation():
    truth = "a red circle below a blue square"
    assert score_caption("a blue square above a red circle", truth)["exact"]
    turned = score_caption("a red circle above a blue square", truth)
    assert turned["colour"] and turned["shape"] and not turned["relation"] and not turned["exact"]
