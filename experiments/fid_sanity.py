"""FID sanity table: real held-out images against real training images, and degraded copies.

    python experiments/fid_sanity.py [--data shapes|mnist] [--n 512]

Prints a Markdown table. A sound FID puts real-vs-real far below blurred, and blurred far
below noise; the real-vs-real floor is not 0 because two finite samples differ.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from transfusion.data.registry import load_dataset
from transfusion.metrics.fid import InceptionFeatures, fid


def pairs(data, n: int) -> torch.Tensor:
    out = []
    for i in range(len(data)):
        doc = data[i]
        if doc.images:
            out.append(doc.images[0].pixels)
            if len(out) == n:
                break
    return torch.stack(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="shapes")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(2)
    train = pairs(load_dataset(args.data, "train", args.size), args.n)
    test = pairs(load_dataset(args.data, "test", args.size), args.n)
    g = torch.Generator().manual_seed(0)
    variants = {
        "real held-out images": test,
        "the same, blurred (5x5 box)": F.avg_pool2d(test, 5, stride=1, padding=2, count_include_pad=False),
        "the same, plus Gaussian noise (sigma 0.3)": (test + 0.3 * torch.randn(test.shape, generator=g)).clamp(-1, 1),
        "the same, colours shuffled (RGB -> BRG)": test[:, [2, 0, 1]],
        "uniform noise": torch.rand(test.shape, generator=g) * 2 - 1,
    }
    features = InceptionFeatures()
    reference = features(train)
    print(f"FID against {len(train)} real training images of `{args.data}` ({args.size}x{args.size}), "
          f"{len(test)} images per row\n")
    print("| images | FID |\n|---|---|")
    for name, images in variants.items():
        print(f"| {name} | {fid(reference, features(images)):.1f} |", flush=True)


if __name__ == "__main__":
    main()
