"""Every sampler, fed a perfect noise oracle, returns the known image."""

import pytest
import torch

from transfusion.diffusion import Diffusion
from transfusion.samplers import SAMPLERS, make_scheduler, sample


def oracle_for(diffusion, x0):
    def oracle(x, t):  # the true noise of x_t for the known clean image, t in 1..T
        ab = diffusion.alpha_bar[t].float().view(-1, 1, 1, 1)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    return oracle


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps", [2, 25, 250])  # (1 step: x0 read at t = T, float32 error ~1e-3)
def test_a_perfect_noise_oracle_gives_back_the_image(sampler, steps):
    diffusion = Diffusion()
    x0 = torch.rand(2, 4, 8, 8) * 2 - 1
    out = sample(oracle_for(diffusion, x0), x0.shape, diffusion, sampler, steps,
                 torch.Generator().manual_seed(0), clip=0)
    assert torch.allclose(out, x0, atol=1e-4), (out - x0).abs().max()


def test_an_off_by_one_timestep_would_be_caught():
    """The oracle test is sharp: shifting the timesteps the model sees by one breaks it."""
    diffusion = Diffusion()
    x0 = torch.rand(2, 4, 8, 8) * 2 - 1
    true = oracle_for(diffusion, x0)
    for shift in (-1, 1):
        shifted = lambda x, t: true(x, (t + shift).clamp(max=diffusion.T))  # noqa: E731
        out = sample(shifted, x0.shape, diffusion, "ddim", 25, torch.Generator().manual_seed(0), clip=0)
        assert (out - x0).abs().max() > 1e-3  # 10x the exact oracle's tolerance


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_clipping_lands_on_the_clamped_image(sampler):
    diffusion = Diffusion()
    x0 = torch.rand(2, 4, 8, 8) * 4 - 2  # half of it outside [-1, 1]
    out = sample(oracle_for(diffusion, x0), x0.shape, diffusion, sampler, 20, torch.Generator().manual_seed(0),
                 clip=1.0)
    assert torch.allclose(out, x0.clamp(-1, 1), atol=1e-4)


def test_rows_with_their_own_generators_match_sampling_them_alone():
    diffusion = Diffusion()
    x0 = torch.rand(3, 4, 8, 8) * 2 - 1
    noisy_oracle = lambda x, t: oracle_for(diffusion, x0[: len(x)])(x, t) * 0.9  # noqa: E731  (not exact: DDPM noise matters)
    batched = sample(noisy_oracle, x0.shape, diffusion, "ddpm", 10, [torch.Generator().manual_seed(i) for i in range(3)])
    for i in range(3):
        alone_oracle = lambda x, t, i=i: oracle_for(diffusion, x0[i : i + 1])(x, t) * 0.9  # noqa: E731
        alone = sample(alone_oracle, (1, 4, 8, 8), diffusion, "ddpm", 10, [torch.Generator().manual_seed(i)])
        assert torch.allclose(batched[i], alone[0], atol=1e-5)


def test_schedulers_use_this_librarys_schedule():
    diffusion = Diffusion()
    for name in SAMPLERS:
        scheduler = make_scheduler(name, diffusion)
        assert torch.allclose(scheduler.alphas_cumprod.double(), diffusion.alpha_bar[1:], atol=1e-6)
    with pytest.raises(ValueError, match="unknown sampler 'heun'"):
        make_scheduler("heun", diffusion)
