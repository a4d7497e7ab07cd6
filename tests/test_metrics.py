"""Metric code on known inputs: CIDEr-D by hand and against the COCO code, FID on known sets."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from transfusion.metrics.cider import cider_d, tokenize
from transfusion.metrics.fid import frechet_distance


def test_cider_worked_example():
    """Two images, references "a b" and "c d". Every n-gram is in one reference of two, so its
    idf is log 2. "a b" for image 1 matches at n = 1 and 2 (cosine 1), has no 3- or 4-grams:
    10 * (1 + 1 + 0 + 0) / 4 = 5. "a d" for image 2 shares the unigram "d" of two (cosine
    1/2) and no bigram: 10 * 0.5 / 4 = 1.25."""
    corpus, each = cider_d(["a b", "a d"], [["a b"], ["c d"]])
    assert each == pytest.approx([5.0, 1.25])
    assert corpus == pytest.approx(3.125)


def test_cider_matches_the_coco_implementation():
    """Expected values computed with pycocoevalcap 1.2's CiderScorer (n=4, sigma=6) on the same
    tokenized captions: corpus score 2.80772322318957."""
    rng = random.Random(0)
    words = "a red blue green circle square triangle big small left right top bottom above below two three".split()
    cands, refs = [], []
    for i in range(50):
        refs.append([" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(rng.randint(1, 3))])
        cands.append(" ".join(rng.choices(words, k=rng.randint(2, 10))) if i % 3 else refs[-1][0])
    corpus, _ = cider_d(cands, refs)
    assert corpus == pytest.approx(2.80772322318957, abs=1e-9)


def test_cider_penalises_length_and_repetition_and_checks_inputs():
    refs = [["a red circle at the top"], ["two blue squares"], ["a green triangle"]]
    _, exact = cider_d(["a red circle at the top", "two blue squares", "a green triangle"], refs)
    _, repeated = cider_d(["a red red red circle circle at the top", "two blue squares", "a green triangle"], refs)
    assert repeated[0] < exact[0]
    assert tokenize("A red, circle's top!") == ["a", "red", "circle's", "top"]
    with pytest.raises(ValueError, match="one reference list per candidate"):
        cider_d(["a"], [])
    with pytest.raises(ValueError, match="at least one reference"):
        cider_d(["a"], [[]])


def test_frechet_distance_of_known_gaussians():
    """N(0, I) against N(m, 4 I) in d dimensions: |m|^2 + d (1 + 4 - 2 * 2) = |m|^2 + d."""
    d = 5
    m = np.arange(d, dtype=float)
    assert frechet_distance(np.zeros(d), np.eye(d), m, 4 * np.eye(d)) == pytest.approx(m @ m + d)
    cov = np.cov(np.random.default_rng(0).normal(size=(50, 8)), rowvar=False)
    assert frechet_distance(np.ones(8), cov, np.ones(8), cov) == pytest.approx(0.0, abs=1e-8)


@pytest.fixture(scope="module")
def inception():
    from transfusion.metrics.fid import InceptionFeatures

    return InceptionFeatures()


@pytest.mark.slow
def test_fid_orders_real_blurred_and_noise_images(inception):
    """Real held-out shapes against real training shapes score far below blurred or noise images."""
    from transfusion.data.shapes import ShapesDataset
    from transfusion.metrics.fid import fid

    n = 64
    train = torch.stack([ShapesDataset("train", size=32)[i].images[0].pixels for i in range(n)])
    test = torch.stack([ShapesDataset("test", size=32)[i].images[0].pixels for i in range(n)])
    blurred = torch.nn.functional.avg_pool2d(test, 5, stride=1, padding=2, count_include_pad=False)
    noise = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = inception(train)
    assert ref.shape == (n, 2048)
    scores = {name: fid(ref, inception(x)) for name, x in [("real", test), ("blurred", blurred), ("noise", noise)]}
    assert abs(fid(ref, ref)) < 1e-3  # eigen-decompositions of 2048-d covariances: float error only
    print(scores)
    assert scores["real"] * 2 < scores["blurred"] < scores["noise"], scores


def test_features_of_a_fixed_set_are_computed_once_per_content(inception):
    import os

    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    folder = Path(os.environ["TRANSFUSION_CACHE"]) / "fid_features"
    before = set(folder.glob("*.npy")) if folder.is_dir() else set()
    first = inception.cached(images)
    (written,) = set(folder.glob("*.npy")) - before
    np.testing.assert_allclose(first, inception(images))  # the same features as computed directly
    np.save(written, np.zeros_like(first))  # a second call reads the file: it sees what the file holds
    assert not inception.cached(images).any()
    inception.cached(-images)  # other images: another file
    assert len(set(folder.glob("*.npy")) - before) == 2


@pytest.mark.slow
def test_digit_judge_reads_real_digits_and_captions():
    from transfusion.data.mnist import MnistDataset
    from transfusion.metrics.digits import accuracy, digit_classifier, digit_in

    net, real_accuracy = digit_classifier(32)
    test = MnistDataset("test", size=32)
    images = torch.stack([test[i].images[0].pixels for i in range(len(test))])
    labels = torch.tensor([test[i].meta["label"] for i in range(len(test))])
    with torch.no_grad():
        predicted = net(images).argmax(-1)
    assert real_accuracy == pytest.approx(float((predicted == labels).float().mean())) and real_accuracy > 0.93
    assert accuracy(net, images, labels) == pytest.approx(real_accuracy)  # 96.4% here
    assert accuracy(net, images, (labels + 1) % 10) < 0.05  # every label off by one: the judge reads the digit
    again, cached_accuracy = digit_classifier(32)  # the second call reads the cached judge
    assert cached_accuracy == real_accuracy and all(torch.equal(a, b) for a, b in
                                                    zip(again.state_dict().values(), net.state_dict().values()))
    assert accuracy(net, torch.zeros(10, 3, 32, 32) - 1, torch.arange(10)) <= 0.2  # blank images: one class at most
    assert [digit_in(c) for c in ("a handwritten seven", "A 3.", "nothing")] == [7, 3, None]
    from transfusion.data.mnist import DIGIT_WORDS
    from transfusion.posttrain.rewards import load_reward  # post-training's digits reward: the judge's probability

    reward, first = load_reward("digits"), test[0]
    wrong = f"a handwritten {DIGIT_WORDS[(first.meta['label'] + 1) % 10]}"
    assert reward(first.caption, first.images[0].pixels) > 0.5 > reward(wrong, first.images[0].pixels)
