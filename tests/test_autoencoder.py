"""Autoencoders: shapes, errors, a short training, persistence, diffusers loading."""

import json

import pytest
import torch

from transfusion.autoencoders import (
    DiffusersAutoencoder,
    IdentityAutoencoder,
    KLAutoencoder,
    load_autoencoder,
    save_autoencoder,
    train_autoencoder,
)
from transfusion.data.document import Document


def random_shapes(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) in [-1, 1]: 1-3 flat-coloured disks or squares on black."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.full((n, 3, size, size), -1.0)
    for image in images:
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            colour = torch.rand(3, generator=generator) * 2 - 1
            cx, cy = torch.randint(2, size - 2, (2,), generator=generator).tolist()
            r = int(torch.randint(2, size // 4 + 1, (1,), generator=generator))
            if torch.rand(1, generator=generator) < 0.5:
                mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
            else:
                mask = ((xs - cx).abs() <= r) & ((ys - cy).abs() <= r)
            image[:, mask] = colour[:, None]
    return images


def tiny_kl(**kwargs) -> KLAutoencoder:
    torch.manual_seed(0)
    return KLAutoencoder(**{"latent_channels": 4, "downsample": 2, "width": 8, **kwargs})


def test_identity_round_trip_is_exact():
    ae = IdentityAutoencoder()
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.equal(ae.decode(ae.encode(pixels)), pixels)
    assert ae.latent_shape(8, 6) == (3, 8, 6)


def test_kl_shapes_and_bad_sizes():
    ae = KLAutoencoder(latent_channels=4, downsample=4, width=8)
    pixels = torch.rand(2, 3, 32, 16) * 2 - 1
    latents = ae.encode(pixels)
    assert latents.shape == (2, 4, 8, 4) == (2, *ae.latent_shape(32, 16))
    decoded = ae.decode(latents)
    assert decoded.shape == pixels.shape and decoded.abs().max() <= 1
    with pytest.raises(ValueError, match="not divisible by the autoencoder's downsample factor 4"):
        ae.latent_shape(30, 32)
    with pytest.raises(ValueError, match="not divisible"):
        ae.encode(torch.zeros(1, 3, 32, 30))
    with pytest.raises(ValueError, match="expected latents"):
        ae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="power of two"):
        KLAutoencoder(downsample=3)


def test_short_training_lowers_reconstruction_error_and_sets_scale():
    images = random_shapes(256)
    held_out = random_shapes(64, seed=1)
    ae = tiny_kl()

    def held_out_mse() -> float:
        return (ae.decode(ae.encode(held_out)) - held_out).square().mean().item()

    before = held_out_mse()
    metrics = train_autoencoder(ae, images, steps=150, batch_size=16, lr=2e-3, progress=False)
    assert held_out_mse() < 0.5 * before
    assert metrics["mse"] < 0.5 * before and metrics["scale"] == pytest.approx(float(ae.scale))
    assert 0.7 < ae.encode(images).std().item() < 1.4  # scale makes latents ~unit std


def test_training_reads_documents_and_plain_iterables():
    images = random_shapes(8)
    documents = [Document.pair("a shape", image) for image in images]
    assert train_autoencoder(tiny_kl(), documents, steps=2, batch_size=4, progress=False)["mse"] > 0
    assert train_autoencoder(tiny_kl(), (image for image in images), steps=2, batch_size=4, progress=False)["mse"] > 0
    with pytest.raises(ValueError, match="exhausted"):  # a one-shot iterator must last all the steps
        train_autoencoder(tiny_kl(), (image for image in images), steps=3, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="empty"):
        train_autoencoder(tiny_kl(), [], steps=1, batch_size=4, progress=False)


def test_save_load_round_trip(tmp_path):
    ae = tiny_kl()
    ae.scale.fill_(0.7)
    save_autoencoder(ae, tmp_path / "ae")
    assert sorted(p.name for p in (tmp_path / "ae").iterdir()) == ["autoencoder.json", "autoencoder.safetensors"]
    assert json.loads((tmp_path / "ae" / "autoencoder.json").read_text())["scale"] == pytest.approx(0.7)
    loaded = load_autoencoder(tmp_path / "ae")
    assert isinstance(loaded, KLAutoencoder) and loaded.config() == ae.config()
    pixels = random_shapes(2)
    assert torch.equal(loaded.encode(pixels), ae.encode(pixels))
    assert torch.equal(loaded.decode(ae.encode(pixels)), ae.decode(ae.encode(pixels)))

    save_autoencoder(IdentityAutoencoder(), tmp_path / "identity")
    assert isinstance(load_autoencoder(tmp_path / "identity"), IdentityAutoencoder)
    assert isinstance(load_autoencoder("identity"), IdentityAutoencoder)


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        load_autoencoder(tmp_path / "no-such-folder")
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_autoencoder(tmp_path)


def tiny_diffusers_kl():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
        layers_per_block=1, scaling_factor=0.5, shift_factor=0.1,
    )


def test_diffusers_kl_from_local_folder(tmp_path):
    vae = tiny_diffusers_kl()
    vae.save_pretrained(tmp_path / "pipeline" / "vae")
    ae = DiffusersAutoencoder(tmp_path / "pipeline" / "vae")
    assert (ae.downsample, ae.latent_channels, ae.latent_shape(16, 16)) == (2, 4, (4, 8, 8))
    pixels = random_shapes(2)
    latents = ae.encode(pixels)
    with torch.no_grad():
        expected = (vae.encode(pixels).latent_dist.mean - 0.1) * 0.5  # diffusers' shift, then scale
    torch.testing.assert_close(latents, expected)
    assert ae.decode(latents).shape == pixels.shape

    from_pipeline = load_autoencoder(tmp_path / "pipeline")  # finds vae/config.json
    torch.testing.assert_close(from_pipeline.encode(pixels), latents)
    save_autoencoder(ae, tmp_path / "saved")  # self-contained: no link back to the diffusers folder
    torch.testing.assert_close(load_autoencoder(tmp_path / "saved").encode(pixels), latents)


def test_diffusers_tiny_from_local_folder(tmp_path):
    from diffusers import AutoencoderTiny

    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                    num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1)).save_pretrained(tmp_path)
    ae = load_autoencoder(tmp_path)
    assert isinstance(ae, DiffusersAutoencoder) and ae.downsample == 4
    pixels = random_shapes(1)
    assert ae.encode(pixels).shape == (1, 4, 4, 4)
    assert ae.decode(ae.encode(pixels)).shape == pixels.shape


def test_diffusers_missing_model_gives_clear_error(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying
    for name in (str(tmp_path / "missing"), "nobody/no-such-vae"):
        with pytest.raises(FileNotFoundError, match="could not find or load .* local folder"):
            DiffusersAutoencoder(name)
