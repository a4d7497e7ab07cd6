"""What tuning sampling settings fairly needs: a validation split the test never shows, the
autoencoder's floor (its reconstructions' FID and error), a count of how often the x0 clamp
fires, and the sampling flags of `transfusion eval` (clamp, image-code temperature and top-k)."""

import json

import pytest
import torch

from transfusion.checkpoint import load_checkpoint
from transfusion.cli import main as cli
from transfusion.data.registry import load_dataset
from transfusion.diffusion import Diffusion
from transfusion.engine import Request
from transfusion.evaluate import evaluate
from transfusion.samplers import counting_clamps, sample


def test_the_validation_split_is_its_own_documents():
    test, validation, train = (load_dataset("shapes", split, 32) for split in ("test", "validation", "train"))
    assert len(validation) == 1000
    captions = {split: [d[i].caption for i in range(50)] for split, d in
                (("test", test), ("validation", validation), ("train", train))}
    assert captions["validation"] != captions["test"] and captions["validation"] != captions["train"]
    same = load_dataset("shapes", "validation", 32)
    assert torch.equal(same[3].images[0].pixels, validation[3].images[0].pixels)  # fixed, like the others
    with pytest.raises(ValueError, match="'mnist' data has no validation split"):
        load_dataset("mnist", "validation", 32)
    with pytest.raises(ValueError, match="split must be one of train, validation, test"):
        load_dataset("shapes", "dev", 32)


def test_counting_clamps_counts_what_the_clamp_moves():
    diffusion = Diffusion(timesteps=1000)
    far = lambda x, t: torch.full_like(x, -50.0)  # noqa: E731  an eps whose x0 lies far outside the clamp
    with counting_clamps() as count:
        sample(far, (2, 1, 2, 2), diffusion, "dpm++", 3, torch.Generator().manual_seed(0), clip=1.0)
    assert count.steps == 6 and count.values == 24 and count.summary()["steps_clamped"] > 0
    with counting_clamps() as off:
        sample(far, (2, 1, 2, 2), diffusion, "dpm++", 3, torch.Generator().manual_seed(0), clip=0.0)
    assert off.values == 0  # no clamp, nothing counted
    sample(far, (1, 1, 2, 2), diffusion, "dpm++", 2, torch.Generator().manual_seed(0), clip=1.0)
    assert count.steps == 6  # outside the block nothing is added


def test_eval_on_the_validation_split_reports_the_floor_and_the_clamp(debug_run, tmp_path):
    out = tmp_path / "val.json"
    cli(["eval", str(debug_run), "--split", "validation", "--suite", "t2i", "floor", "--n", "4", "--steps", "2",
         "--sampler", "dpm++", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["split"] == "validation"
    assert report["t2i"]["settings"]["data"] == "shapes/validation"
    assert set(report["t2i"]["clamp"]) == {"x0_values_clamped", "steps_clamped"}
    floor = report["floor"]
    assert floor["settings"]["data"] == "shapes/validation" and floor["settings"]["samples"] == 4
    assert floor["mse"] == 0 and floor["fid"] < 1e-3  # the debug run's images are pixels: a floor of nothing
    assert "Autoencoder floor" in out.with_suffix(".md").read_text() and out.with_name("val_floor.png").is_file()
    cli(["eval", str(debug_run), "--suite", "t2i", "--n", "2", "--steps", "2", "--sampler", "dpm++", "--clip", "0",
         "--no-fid", "--out", str(tmp_path / "off.json")])
    off = json.loads((tmp_path / "off.json").read_text())["t2i"]
    assert off["settings"]["clip"] == 0 and "clamp" not in off and off["settings"]["data"] == "shapes/test"


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_the_floor_is_the_autoencoder_s_own_reconstruction(debug_run, kind):
    import dataclasses

    from transfusion.autoencoders import KLAutoencoder, VQAutoencoder

    torch.manual_seed(0)
    ae = KLAutoencoder(3, 4, 4, 8) if kind == "kl" else VQAutoencoder(3, 16, 4, 4, 8)  # untrained: a poor floor
    loaded = dataclasses.replace(load_checkpoint(debug_run), autoencoder=ae.eval())
    report, samples = evaluate(loaded, ["floor"], 3, fid=False)
    size = loaded.config.image.size
    real = torch.stack([load_dataset("shapes", "test", size)[i].images[0].pixels for i in range(3)])
    with torch.no_grad():
        expected = ae.decode(ae.encode(real)).clamp(-1, 1)
    assert torch.allclose(samples["floor"]["images"], expected, atol=1e-6)
    assert report["floor"]["mse"] == pytest.approx(float((expected - real).square().mean()), rel=1e-5)
    assert report["floor"]["mse"] > 0.01


def test_the_validation_split_refuses_suites_it_cannot_score(debug_run):
    with pytest.raises(ValueError, match="the validation split scores the t2i, i2t, interleaved, floor suites"):
        evaluate(load_checkpoint(debug_run), ["text", "t2i"], 2, Request(steps=2), fid=False, split="validation")


def test_image_code_sampling_flags_reach_the_request(debug_run, tmp_path, monkeypatch):
    import transfusion.evaluate as evaluation

    seen = {}

    def fake(loaded, suites, n, req, fid, split):
        seen.update(req=req, split=split)
        return {"checkpoint": "x", "step": 0, "dataset": "shapes"}, {}

    monkeypatch.setattr(evaluation, "evaluate", fake)
    cli(["eval", str(debug_run), "--suite", "t2i", "--image-temperature", "0.8", "--top-k", "64", "--clip", "2",
         "--out", str(tmp_path / "r.json")])
    assert (seen["req"].image_temperature, seen["req"].top_k, seen["req"].clip, seen["split"]) == (0.8, 64, 2.0, "test")
