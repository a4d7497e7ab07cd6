"""The first sampler: shapes of its outputs, batching, and its errors."""

import math

import pytest
import torch

from transfusion.autoencoder import IdentityAutoencoder
from transfusion.config import load_config
from transfusion.data.document import Image, Text
from transfusion.diffusion import Diffusion
from transfusion.model.transfusion import Transfusion
from transfusion.sample import generate_images, generate_text
from transfusion.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def setup():
    cfg = load_config("debug")
    torch.manual_seed(0)
    tok = ByteTokenizer()
    return Transfusion(cfg, tok.vocab_size, 3).eval(), tok, IdentityAutoencoder()


def test_generate_images_shapes_and_range(setup):
    model, tok, ae = setup
    out = generate_images(model, tok, ae, ["a red circle", None, "two blue squares"], 16, steps=3, guidance=2.0,
                          generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 16, 16)
    assert out.min() >= -1 and out.max() <= 1


def test_generate_text_batches_prompts_of_different_lengths(setup):
    model, tok, ae = setup
    img = torch.zeros(3, 16, 16)
    prompts = [[Text("a")], [Image(img)], [Text("a much longer prompt"), Image(img), Text("then")]]
    batched = generate_text(model, tok, ae, prompts, max_new_tokens=5)
    one_by_one = [generate_text(model, tok, ae, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == one_by_one


def test_prompt_longer_than_the_context_is_a_clear_error(setup):
    model, tok, ae = setup
    with pytest.raises(ValueError, match="model.max_seq_len"):
        generate_text(model, tok, ae, [[Text("x" * 300)]], max_new_tokens=1)


def test_image_size_the_model_cannot_take_is_a_clear_error(setup):
    model, tok, ae = setup
    with pytest.raises(ValueError, match="not divisible"):
        generate_images(model, tok, ae, ["a red circle"], 18, steps=2)


def test_ddpm_with_a_perfect_noise_oracle_returns_the_image():
    diffusion = Diffusion()
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    generator = torch.Generator().manual_seed(0)

    def oracle(x, t):  # the true noise of x_t for the known clean image
        ab = diffusion.alpha_bar[t].float().view(-1, 1, 1, 1)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    out = diffusion.sample_ddpm(oracle, x0.shape, steps=20, generator=generator)
    assert torch.allclose(out, x0, atol=1e-4)
    assert diffusion.timesteps_for(20)[0] == diffusion.T and diffusion.timesteps_for(20)[-1] == 1
    assert math.isclose(diffusion.alpha_bar[0].item(), 1.0)
