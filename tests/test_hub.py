"""Hugging Face conventions with no network: save_pretrained / from_pretrained / push_to_hub, a
local Hub cache read with HF_HUB_OFFLINE=1, repo ids wherever a path goes, and the Pipeline."""

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import load_file


def as_hub_cache(folder, cache, repo_id, commit="0123456789abcdef0123456789abcdef01234567"):
    """Lay ``folder`` out in ``cache`` the way huggingface_hub caches a downloaded repo."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, root / "snapshots" / commit)


def test_save_pretrained_writes_the_inference_files_and_a_model_card(debug_run, tmp_path):
    from transfusion.sharing import from_pretrained, save_pretrained

    out = save_pretrained(debug_run, tmp_path / "saved")
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.yaml", "tokenizer.json", "state.json",
                                                  "README.md"}
    assert not (out / "train_state").exists()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transfusion\nlicense: mit\npipeline_tag: text-to-image\n")
    assert "2 layers, width 64" in card and "step 2" in card and "## Evaluation" in card  # the run's report
    again = from_pretrained(out)
    original = load_file(next((debug_run / "checkpoints").iterdir()) / "model.safetensors")
    assert all(torch.equal(again.model.state_dict()[k], v) for k, v in original.items())
    checkpoint_card = next((debug_run / "checkpoints").iterdir()) / "README.md"
    assert checkpoint_card.read_text().startswith("---\nlibrary_name: transfusion")  # every checkpoint has one


def test_push_to_hub_uploads_the_saved_folder(debug_run, monkeypatch):
    from huggingface_hub import HfApi

    from transfusion.sharing import push_to_hub

    calls = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, **kw):
        calls["create"] = (repo_id, private, exist_ok)

    def upload_folder(self, repo_id, folder_path, commit_message=None, **kw):  # the network boundary
        calls["upload"] = (repo_id, sorted(p.name for p in folder_path.iterdir()), commit_message,
                           (folder_path / "README.md").read_text())
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = push_to_hub(debug_run, "me/tiny-transfusion", private=True)
    assert url.endswith("/commit/abc") and calls["create"] == ("me/tiny-transfusion", True, True)
    repo, files, message, card = calls["upload"]
    assert repo == "me/tiny-transfusion" and "model.safetensors" in files and message.endswith("step 2")
    assert 'Pipeline.from_pretrained("me/tiny-transfusion")' in card


def test_repo_ids_load_from_a_local_hub_cache_offline(debug_run, pretrained_lm, tmp_path):
    from transfusion.sharing import save_pretrained
    from test_autoencoder import tiny_diffusers_kl

    cache = tmp_path / "hub"
    as_hub_cache(save_pretrained(debug_run, tmp_path / "saved"), cache, "me/tiny")
    tiny_diffusers_kl().save_pretrained(tmp_path / "vae")
    as_hub_cache(tmp_path / "vae", cache, "me/vae")
    as_hub_cache(pretrained_lm[2], cache, "me/llama")
    script = f"""
import json
from transfusion.autoencoders import load_autoencoder
from transfusion.checkpoint import load_checkpoint
from transfusion.hf import model_fields, pretrained_tokenizer
from transfusion.pipeline import Pipeline
from transfusion.tokenizer import load_tokenizer

run = load_checkpoint("me/tiny")
ae = load_autoencoder("me/vae")
pipe = Pipeline.from_pretrained("me/tiny")
image = pipe("a red circle", num_inference_steps=2).images[0]
print(json.dumps({{"step": run.step, "ae": type(ae).__name__, "latent": list(ae.latent_shape(16, 16)),
                  "vocab": load_tokenizer("me/tiny").vocab_size, "size": list(image.size),
                  "llama": model_fields("me/llama")["n_layers"], "llama_vocab": pretrained_tokenizer("me/llama").vocab_size}}))
try:
    load_checkpoint("me/missing")
except FileNotFoundError as err:
    print("missing:", err)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": os.path.dirname(__file__)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    first, missing = run.stdout.strip().splitlines()[-2:]
    got = json.loads(first)
    assert got["step"] == 2 and got["ae"] == "DiffusersAutoencoder" and got["latent"] == [4, 8, 8]
    assert got["size"] == [16, 16] and got["llama"] == pretrained_lm[0].config.num_hidden_layers
    assert got["vocab"] > 256 and got["llama_vocab"] > pretrained_lm[0].config.vocab_size
    assert "me/missing" in missing and "HF_HUB_OFFLINE is set" in missing


def test_the_pipeline_in_the_diffusers_manner(debug_run):
    import transfusion

    assert transfusion.__version__ == version("transfusion-mm")
    pipe = transfusion.Pipeline.from_pretrained(debug_run)
    g = torch.Generator().manual_seed(0)
    out = pipe("a red circle", num_inference_steps=2, guidance_scale=3.0, generator=g, num_images_per_prompt=2)
    assert len(out.images) == 2 and all(isinstance(x, PILImage.Image) and x.size == (16, 16) for x in out.images)
    assert out.settings["steps"] == 2 and out.settings["guidance"] == 3.0
    assert out.settings["sampler"] == "dpm++sde"  # interactive use: the measured fast sampler, unless one is named
    same = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                num_images_per_prompt=2).images
    assert [x.tobytes() for x in same] == [x.tobytes() for x in out.images]  # a generator's seed reproduces
    text = pipe.caption(out.images[0])
    assert isinstance(text, str) and text
    assert pipe.caption(out.images) == [text, pipe.caption(out.images[1])]
    parts = pipe.generate("first a red circle", max_new_tokens=8, num_inference_steps=2)
    assert parts and all(isinstance(p, (str, PILImage.Image)) for p in parts)


PAPER_SIZES = {"0.16B": 0.16e9, "0.37B": 0.37e9, "0.76B": 0.76e9, "1.4B": 1.4e9, "7B": 7e9}


@pytest.mark.parametrize("preset", list(PAPER_SIZES))
def test_paper_presets_have_the_papers_sizes_and_256_latent_patches(preset):
    """Built on the meta device with a stand-in of the named autoencoder's geometry (Stable
    Diffusion's KL-VAE: 8x, 4 channels) and the paper's 32k text vocabulary."""
    from diffusers import AutoencoderKL

    from transfusion.autoencoders import DiffusersAutoencoder
    from transfusion.config import load_config
    from transfusion.engine import resolve_clip
    from transfusion.model.transfusion import Transfusion
    from transfusion.presets import PAPER_AUTOENCODER

    cfg = load_config(preset)
    assert cfg.autoencoder.name == PAPER_AUTOENCODER and cfg.image.size == 256
    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                            scaling_factor=0.18215)
        ae = DiffusersAutoencoder(model=vae)
        vocab = type("Tokenizer", (), {"vocab_size": 32000 + 5})()
        model = Transfusion.build(cfg.model, cfg.image, vocab, ae)
    latent = ae.latent_shape(256, 256)
    assert latent == (4, 32, 32) and model.num_patches(latent[1:]) == 256
    assert resolve_clip(cfg.sampling.clip_sample, ae) == 3.0  # latents: not the pixel range, the sampling guard
    # the paper counts the transformer with its embeddings; the U-Net layers come on top (its 0.27B at 7B)
    transformer = model.num_params() - sum(p.numel() for p in model.image.parameters())
    assert abs(transformer / PAPER_SIZES[preset] - 1) < 0.1, transformer


def test_a_missing_path_is_no_such_folder_and_a_repo_downloads_only_what_is_read(debug_run, tmp_path, monkeypatch):
    import huggingface_hub

    from transfusion.checkpoint import load_checkpoint
    from transfusion.hf import model_fields
    from transfusion.sharing import save_pretrained

    asked = []
    saved = save_pretrained(debug_run, tmp_path / "saved")

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        asked.append((repo_id, allow_patterns))
        return str(saved)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for path in ("runs/tiny", "./tiny", "tiny/", str(tmp_path / "runs" / "tiny")):
        with pytest.raises(FileNotFoundError, match=f"no such checkpoint or run folder: {path}"):
            load_checkpoint(path)
    assert asked == []  # none of them was tried as a Hub repo

    assert load_checkpoint("me/tiny").step == 2
    with pytest.raises(FileNotFoundError):
        model_fields("me/llama")  # (the fake snapshot holds no config.json)
    (repo, checkpoint_files), (_, lm_files) = asked
    assert repo == "me/tiny" and "*" not in checkpoint_files and "model.safetensors" in checkpoint_files
    assert "config.json" in lm_files and "*" not in lm_files
