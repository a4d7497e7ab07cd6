"""Rectified flow (``diffusion.objective=flow``): noising, the time draw, oracle sampling and
the engine's cache, as for DDPM (training: ``test_training.py``; 2 processes: ``test_distributed.py``)."""

import dataclasses

import pytest
import torch

from transfusion.autoencoders import IdentityAutoencoder
from transfusion.components import build_components
from transfusion.config import load_config
from transfusion.data.document import Image, Text
from transfusion.diffusion import Flow, shift_timesteps
from transfusion.engine import Engine, Request
from transfusion.samplers import FLOW_SAMPLERS, sample
from transfusion.tokenizer import ByteTokenizer

FLOW = ["diffusion.objective=flow"]


def velocity_oracle(x0):
    def oracle(x, t):  # the true velocity of x_t towards the known clean image; t in model units
        return (x - x0[: len(x)]) / (t / 1000).view(-1, 1, 1, 1)
    return oracle


def test_noising_and_target_follow_the_straight_path():
    flow = Flow()
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0.0, 250.0, 1000.0])
    xt = flow.q_sample(x0, t, eps)
    assert torch.equal(xt[0], x0[0]) and torch.allclose(xt[1], 0.75 * x0[1] + 0.25 * eps[1]) and torch.equal(xt[2], eps[2])
    assert torch.equal(flow.target(x0, eps), eps - x0)
    assert torch.allclose(xt[1] - 0.25 * flow.target(x0, eps)[1], x0[1], atol=1e-6)  # x0 = x_t - t v


def test_times_are_logit_normal_capped_and_shifted():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    n = 20_000
    t = Flow().sample_t(torch.full((n,), 1000), g()) / 1000
    assert 0 < float(t.min()) and float(t.max()) < 1 and abs(float(t.median()) - 0.5) < 0.02
    capped = Flow().sample_t(torch.full((n,), 500), g()) / 1000  # image-first examples: t <= 0.5
    assert float(capped.max()) <= 0.5 and torch.allclose(capped, t / 2)
    shifted = Flow(shift=3.0).sample_t(torch.full((n,), 1000), g()) / 1000
    assert torch.allclose(shifted, shift_timesteps(t, 3.0), atol=1e-6) and float(shifted.median()) > 0.7
    by_size = Flow(shift_reference=64)  # SD3's rule: sqrt(latent elements / reference)
    assert by_size.shift(256) == 2.0 and by_size.shift(64) == 1.0 and Flow(shift=1.5).shift(256) == 1.5


@pytest.mark.parametrize("sampler", FLOW_SAMPLERS)
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_an_oracle_velocity_gives_back_the_image(sampler, shift):
    x0 = torch.rand(2, 4, 8, 8) * 2 - 1
    for steps in (1, 25):
        out = sample(velocity_oracle(x0), x0.shape, Flow(shift=shift), sampler, steps, torch.Generator().manual_seed(0))
        assert torch.allclose(out, x0, atol=1e-5), (steps, (out - x0).abs().max())
    clipped = sample(velocity_oracle(x0 * 3), x0.shape, Flow(shift=shift), sampler, 10, clip=1.0)
    assert clipped.abs().max() <= 1 + 1e-5  # clipping sees the clamped x0


@pytest.mark.parametrize("sampler", FLOW_SAMPLERS)
def test_strength_runs_a_share_of_the_steps_from_the_noised_init(sampler):
    init, x0 = torch.rand(2, 4, 8, 8) * 2 - 1, torch.rand(2, 4, 8, 8) * 2 - 1
    times = []

    def oracle(x, t):
        times.append(float(t[0]))
        return velocity_oracle(x0)(x, t)

    out = sample(oracle, x0.shape, Flow(), sampler, 10, torch.Generator().manual_seed(0), init=init, strength=0.5)
    assert torch.allclose(out, x0, atol=1e-5)
    per_step = 2 if sampler == "heun" else 1  # Heun's last step is one evaluation (to t = 0)
    assert len(times) == 5 * per_step - (per_step - 1) and max(times) < 560  # started near t = 0.5, not 1


def debug(*overrides):
    cfg = load_config("debug", overrides=[*FLOW, *overrides])
    torch.manual_seed(0)
    run = build_components(cfg, tokenizer=ByteTokenizer(), autoencoder=IdentityAutoencoder())
    return cfg, run.tokenizer, run.model


def test_flow_generation_with_cache_equals_recomputing_every_prefix():
    cfg, tok, model = debug("image.adapter=unet", "image.patch_size=1")
    with torch.no_grad():  # an untrained model that reads its prompt
        for block in model.trunk.blocks:
            block.attn.qkv.weight.mul_(4)
    cached = Engine(model, tok, IdentityAutoencoder(), cfg)
    reference = Engine(model, tok, IdentityAutoencoder(), cfg, cache_prefix=False)
    prompts = [[Text("a red circle")], [Text("first"), Image(torch.rand(3, 16, 16) * 2 - 1), Text("then")]]
    for req in (Request(max_new_tokens=3, steps=4, guidance=2.0, seed=3),
                Request(max_new_tokens=3, sampler="heun", steps=3, guidance=1.5, image_guidance=3.0, seed=1)):
        a, b = cached.generate(prompts, req, force_image=True), reference.generate(prompts, req, force_image=True)
        for x, y in zip(a, b, strict=True):
            assert torch.allclose(x[0].pixels, y[0].pixels, atol=1e-4)
    alone = cached.generate(prompts[1:], dataclasses.replace(req, seed=2), force_image=True)
    assert torch.allclose(alone[0][0].pixels, a[1][0].pixels, atol=1e-4)  # row b samples with seed + b
    assert Request().resolve(cfg, IdentityAutoencoder()).sampler == "euler"  # auto: euler for flow
    with pytest.raises(ValueError, match="sampler 'ddpm' does not sample diffusion.objective=flow"):
        Request(sampler="ddpm").resolve(cfg, IdentityAutoencoder())


def test_a_flow_run_trains_samples_and_evaluates_through_the_commands(tmp_path):
    import json

    from transfusion.cli import COMMANDS
    from transfusion.cli import main as cli

    out = tmp_path / "flow"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), *FLOW, "train.steps=3", "train.eval_samples=2",
                       "sampling.steps=2"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "flow" in rows[-1] and "ddpm" not in rows[-1]
    assert json.loads((out / "report.json").read_text())["t2i"]["settings"]["sampler"] == "euler"
    cli(["generate", str(out), "a red circle", "--n", "1", "--sampler", "heun", "--steps", "2", "--out", str(tmp_path / "g")])
    assert json.loads((tmp_path / "g" / "000.json").read_text())["sampler"] == "heun"
