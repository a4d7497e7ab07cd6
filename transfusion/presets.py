"""Named presets: partial configs (``{section: {key: value}}``) that ``config.load_config``
applies over the dataclass defaults, from a CPU debug size up to the paper's 7B (Table 1)."""

from __future__ import annotations

# the paper's frozen 8x autoencoder (its own 86M KL-VAE, 8 latent channels) is not public: Stable Diffusion's
# KL-VAE (8x, 4 channels) stands in; a 16-channel AutoencoderKL (e.g. FLUX.1's vae/) by autoencoder.name=REPO_OR_DIR
PAPER_AUTOENCODER = "stabilityai/sd-vae-ft-mse"


def _paper(layers: int, dim: int, heads: int) -> dict:
    """The paper's sizes (Table 1) on its image recipe: 256 px -> 32x32 latents of a frozen 8x
    autoencoder, one U-Net down block then 1x1 patches (the paper's 2x2 patch): 256 positions per image."""
    return {
        "model": {"dim": dim, "n_layers": layers, "n_heads": heads, "max_seq_len": 4096},
        "image": {"size": 256, "patch_size": 1, "adapter": "unet", "unet_channels": [min(dim, 512)]},
        "autoencoder": {"name": PAPER_AUTOENCODER},
        "data": {"tokenizer": "bpe", "bpe_vocab_size": 32000, "seq_len": 4096, "batch_size": 1},
        "sampling": {"steps": 250},
    }


def _cpu(layers: int, steps: int, warmup: int, log_every: int, checkpoint_every: int, sample_every: int) -> dict:
    """CPU presets: 32 px images through a small KL autoencoder trained at the start of the
    run (8x8x4 latents), one U-Net down block, so 16 tokens per image; a BPE on the run's text.
    One document in five is interleaved (two or three shapes images, each after its own phrase):
    at the default 5% a 4-layer model gave the later images the first phrase's colour too often."""
    return {
        "model": {"dim": 256, "n_layers": layers, "n_heads": 4, "max_seq_len": 256},
        "image": {"size": 32, "unet_channels": [64], "patch_size": 1},
        "autoencoder": {"name": "train"},
        "sampling": {"clip_sample": 3.0},
        "data": {"tokenizer": "bpe", "bpe_vocab_size": 512, "seq_len": 256, "batch_size": 8,
                 "interleaved_fraction": 0.2},
        "optim": {"lr": 1e-3, "warmup_steps": warmup, "min_lr": 1e-4},
        "train": {"steps": steps, "log_every": log_every, "checkpoint_every": checkpoint_every,
                  "sample_every": sample_every},
    }


PRESETS: dict[str, dict] = {
    # seconds; for tests and smoke runs
    "debug": {
        "model": {"dim": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 256},
        "image": {"size": 16, "unet_channels": [16], "patch_size": 2},
        "data": {"seq_len": 128, "batch_size": 4},
        "optim": {"lr": 1e-3, "warmup_steps": 5, "min_lr": 1e-4},
        "sampling": {"steps": 10},
        "train": {"steps": 20, "log_every": 5, "checkpoint_every": 10, "eval_samples": 8},
    },
    # the main job: about 7 to 11 minutes on 2 CPU cores
    "tiny": _cpu(layers=4, steps=1200, warmup=100, log_every=20, checkpoint_every=200, sample_every=400),
    # a longer CPU run: about 40 minutes of training here
    "small": _cpu(layers=6, steps=3300, warmup=200, log_every=50, checkpoint_every=300, sample_every=1100),
    # the paper's sizes (Table 1): layers / width / heads
    "0.16B": _paper(16, 768, 12),
    "0.37B": _paper(24, 1024, 16),
    "0.76B": _paper(24, 1536, 24),
    "1.4B": _paper(24, 2048, 16),
    "7B": _paper(32, 4096, 32),
}
