"""examples/own_images.py end to end on a small folder of captioned images, at debug scale."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image as PILImage

from transfusion.data.shapes import ShapesDataset
from transfusion.visualize import to_pil

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import emoji_folder  # noqa: E402


def captioned_folder(root: Path, split: str, n: int) -> None:
    """n 64 px shapes scenes as NAME.png + NAME.txt, the layout users bring."""
    folder = root / split
    folder.mkdir(parents=True)
    shapes = ShapesDataset(split, size=64)
    for i in range(n):
        doc = shapes[i]
        to_pil(doc.images[0].pixels).save(folder / f"scene_{i}.png")
        (folder / f"scene_{i}.txt").write_text(doc.caption + "\n")


@pytest.mark.slow
def test_own_images_example_runs_every_step_and_resumes(tmp_path):
    images, work = tmp_path / "images", tmp_path / "work"
    captioned_folder(images, "train", 24)
    captioned_folder(images, "test", 6)
    command = [sys.executable, str(EXAMPLES / "own_images.py"), "--images", str(images), "--work", str(work),
               "--preset", "debug", "--vae-steps", "2", "--n", "4", "--no-fid",
               "train.steps=3", "train.eval_samples=2", "sampling.steps=2"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]

    # the autoencoder is a diffusers folder, 8x downsampling, and training read it from there
    vae_config = json.loads((work / "vae" / "config.json").read_text())
    assert vae_config["_class_name"] == "AutoencoderKL" and len(vae_config["block_out_channels"]) == 4
    assert (work / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    run_config = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert run_config["autoencoder"]["name"] == str(work / "vae")
    assert run_config["data"]["dataset"] == f"{images}/{{split}}" and run_config["image"]["size"] == 64

    # generated images have the folder's size; every held-out image got a caption line
    pngs = sorted((work / "generated").glob("[0-9]*.png"))
    assert len(pngs) == 8 * 4 and PILImage.open(pngs[0]).size == (64, 64)
    captions = json.loads((work / "captions.json").read_text())["results"]
    assert [Path(c["images"][0]).name for c in captions] == [f"scene_{i}.png" for i in range(6)]
    report = json.loads((work / "eval" / "report.json").read_text())
    assert report["dataset"] == f"{images}/{{split}}"
    assert report["t2i"]["settings"]["samples"] == 4 and report["i2t"]["settings"]["samples"] == 4
    summary = json.loads((work / "summary.json").read_text())
    assert summary["cider_d"] == report["i2t"]["cider_d"] and summary["fid"] is None

    # a second run finds every output and runs nothing again
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "$ " not in again.stdout


def test_emoji_captions_come_from_their_names():
    assert emoji_folder.caption_of(":waving_hand_medium_skin_tone:") == "waving hand medium skin tone"
    assert emoji_folder.caption_of(":Japan:") == "Japan"


@pytest.mark.skipif(not Path(emoji_folder.FONT).is_file(), reason="Debian fonts-noto-color-emoji is not installed")
def test_an_emoji_renders_as_one_centred_picture_on_white():
    from PIL import ImageFont

    font = ImageFont.truetype(emoji_folder.FONT, emoji_folder.GLYPH_PX)
    picture = emoji_folder.render("\N{RED APPLE}", font, 64)
    assert picture.size == (64, 64) and picture.mode == "RGB"
    assert picture.getpixel((0, 0)) == (255, 255, 255)  # the corner is background
    red, green, blue = picture.getpixel((32, 40))
    assert red > 150 and green < 100 and blue < 100  # the apple's middle is red
