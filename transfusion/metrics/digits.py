"""A small CNN that reads handwritten digits: the prompt-following judge for the MNIST data.

It is trained on the real training digits (the same split the generative model trains on)
and reports its own accuracy on the real test digits, so a score on generated images can be
read against what the judge manages on real ones. Trained once per image size and cached
(``~/.cache/transfusion/``, or ``$TRANSFUSION_CACHE``), written atomically.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from transfusion.data.mnist import DIGIT_WORDS
from transfusion.fileio import atomic_write, cache_dir


class DigitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> logits (N, 10); any size >= 16."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.adaptive_avg_pool2d(x, 4).flatten(1)  # keeps the layout of the strokes
        return self.head(F.relu(self.fc(x)))


def _split(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from transfusion.data.mnist import MnistDataset

    data = MnistDataset(split, size=size)
    docs = [data[i] for i in range(len(data))]
    return torch.stack([d.images[0].pixels for d in docs]), torch.tensor([d.meta["label"] for d in docs])


@torch.no_grad()
def accuracy(net: DigitNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    predicted = torch.cat([net(chunk).argmax(-1) for chunk in images.split(256)])
    return float((predicted == labels).float().mean())


def train_digit_classifier(size: int, epochs: int = 4, seed: int = 0) -> tuple[DigitNet, float]:
    """Train on the real training digits; returns the net and its accuracy on the real test digits."""
    images, labels = _split("train", size)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(images), generator=generator).split(64):
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()  # small translations
            x = torch.roll(images[idx], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net, accuracy(net, *_split("test", size))


def digit_classifier(size: int) -> tuple[DigitNet, float]:
    """The cached classifier for ``size`` pixels, trained on first use: (net, test accuracy)."""
    folder = cache_dir()
    path = folder / f"digit_classifier_{size}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        net = DigitNet()
        net.load_state_dict(saved["weights"])
        return net.eval(), saved["test_accuracy"]
    net, test_accuracy = train_digit_classifier(size)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"weights": net.state_dict(), "test_accuracy": test_accuracy}, tmp))
    return net.eval(), test_accuracy


def digit_in(caption: str) -> int | None:
    """The digit a caption names ("a handwritten seven" -> 7), or None."""
    words = re.findall(r"[a-z]+|\d", caption.lower())
    for w in words:
        if w in DIGIT_WORDS:
            return DIGIT_WORDS.index(w)
        if w.isdigit():
            return int(w)
    return None
