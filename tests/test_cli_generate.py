"""The generate and caption commands on a real (briefly trained) run folder."""

import json

import numpy as np
import pytest
from PIL import Image as PILImage

from transfusion.cli import main as cli


@pytest.fixture()
def run(debug_run):
    return debug_run


def pixels(path):
    return np.asarray(PILImage.open(path))


def test_generate_writes_images_and_their_settings(run, tmp_path):
    out = tmp_path / "g"
    cli(["generate", str(run), "a red circle", "two blue squares", "--n", "2", "--sampler", "dpm++",
         "--steps", "3", "--cfg", "2.5", "--seed", "7", "--size", "16x32", "--out", str(out)])
    records = [json.loads((out / f"{i:03d}.json").read_text()) for i in range(4)]
    assert [r["prompt"] for r in records] == ["a red circle", "a red circle", "two blue squares", "two blue squares"]
    assert [r["seed"] for r in records] == [7, 8, 9, 10]
    for r in records:
        assert (r["sampler"], r["steps"], r["guidance"], r["image_size"]) == ("dpm++", 3, 2.5, [16, 32])
        assert r["step"] == 2 and r["checkpoint"].endswith("step_000002")
        assert pixels(out / r["images"][0]).shape == (16, 32, 3)
    assert (out / "grid.png").is_file()
    # a sample depends on its seed only, not on how the samples were batched
    again = tmp_path / "again"
    cli(["generate", str(run), "two blue squares", "--n", "1", "--sampler", "dpm++", "--steps", "3", "--cfg", "2.5",
         "--seed", "9", "--size", "16x32", "--batch-size", "1", "--out", str(again)])
    assert np.abs(pixels(again / "000.png").astype(int) - pixels(out / "002.png").astype(int)).max() <= 1


def test_interleaved_generation_and_captioning(run, tmp_path, capsys):
    out = tmp_path / "i"
    cli(["generate", str(run), "--interleaved", "first a red circle", "--n", "1", "--max-new-tokens", "6",
         "--steps", "2", "--temperature", "1.0", "--out", str(out)])
    record = json.loads((out / "000.json").read_text())
    assert record["mode"] == "interleaved" and isinstance(record["text"], str) and record["text"]
    image = tmp_path / "in.png"
    PILImage.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(image)  # not square, not the run's size
    capsys.readouterr()
    cli(["caption", str(run), str(image), str(image), "--prompt", "a", "--max-new-tokens", "4",
         "--out", str(tmp_path / "c.json")])
    printed = capsys.readouterr().out.split("\n")  # (an untrained model may print form feeds)
    result = json.loads((tmp_path / "c.json").read_text())
    assert len(result["results"]) == 2 and result["results"][0] == result["results"][1]  # greedy: same image, same text
    assert printed[0] == f"{image}: a{result['results'][0]['caption']}"
    cli(["caption", str(run), str(image), str(image), "--together", "--max-new-tokens", "2",
         "--out", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text())["results"][0]["images"] == [str(image)] * 2
    # an editing-style prompt: an image, then text, with separate guidance scales
    cli(["generate", str(run), "make it red", "--image", str(image), "--image-cfg", "1.5", "--cfg", "4", "--n", "1",
         "--steps", "2", "--out", str(tmp_path / "edit")])
    record = json.loads((tmp_path / "edit" / "000.json").read_text())
    assert (record["prompt_images"], record["image_guidance"], record["guidance"]) == ([str(image)], 1.5, 4.0)


@pytest.mark.parametrize("argv, message", [
    (["a", "--size", "17"], "not divisible"),
    (["a", "--size", "512"], "image.max_grid"),
    (["x" * 400], "model.max_seq_len"),
    (["a", "--steps", "0"], "sampling steps must be in 1..1000"),
])
def test_generate_errors_are_clear(run, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli(["generate", str(run), *argv, "--n", "1", "--out", str(tmp_path / "e")])
    assert exit_info.value.code == 1 and message in capsys.readouterr().err


def test_generate_usage_errors(run, tmp_path, capsys):
    for argv in (["a", "--sampler", "lms"], ["a", "--interleaved", "b"], []):
        with pytest.raises(SystemExit) as exit_info:
            cli(["generate", str(run), *argv, "--out", str(tmp_path / "e")])
        assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:  # a flow sampler for a DDPM run: a clear error, not a usage one
        cli(["generate", str(run), "a", "--sampler", "euler", "--out", str(tmp_path / "e")])
    assert exit_info.value.code == 1 and "does not sample diffusion.objective=ddpm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["caption", str(run), str(tmp_path / "missing.png")])
    assert "image file not found" in capsys.readouterr().err


def test_interactive_commands_default_to_the_measured_fast_sampler_eval_to_the_papers(run, tmp_path):
    from transfusion.config import load_config
    from transfusion.engine import interactive_sampler

    out = tmp_path / "fast"
    cli(["generate", str(run), "a red circle", "--n", "1", "--out", str(out)])
    record = json.loads((out / "000.json").read_text())
    assert (record["sampler"], record["steps"]) == ("dpm++sde", 25)
    assert interactive_sampler(load_config("debug")) == "dpm++sde"
    assert interactive_sampler(load_config("debug", overrides=["sampling.sampler=ddim"])) is None  # the run's choice
    assert interactive_sampler(load_config("debug", overrides=["diffusion.objective=flow"])) is None
    cli(["eval", str(run), "--suite", "t2i", "--no-fid", "--n", "2", "--out", str(tmp_path / "r.json")])
    settings = json.loads((tmp_path / "r.json").read_text())["t2i"]["settings"]
    assert settings["sampler"] == "ddpm"  # evaluation samples as the paper does unless told


def test_the_caption_command_decodes_as_the_library_does(run, tmp_path, monkeypatch, capsys):
    from transfusion.engine import Engine
    from transfusion.pipeline import Pipeline

    image = tmp_path / "in.png"
    PILImage.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(image)
    real, requests = Engine.generate, []

    def recorded(self, prompts, req, **kwargs):
        requests.append(req)
        return real(self, prompts, req, **kwargs)

    monkeypatch.setattr(Engine, "generate", recorded)
    cli(["caption", str(run), str(image), "--max-new-tokens", "4", "--out", str(tmp_path / "c.json")])
    from_library = Pipeline.from_pretrained(str(run)).caption(PILImage.open(image), max_new_tokens=4)
    assert [r.min_new_tokens for r in requests] == [1, 1]  # the command's, then the library's
    assert json.loads((tmp_path / "c.json").read_text())["results"][0]["caption"] == from_library
