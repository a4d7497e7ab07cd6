"""Every sampler, fed a perfect noise oracle, returns the known image."""

import pytest
import torch

from transfusion.autoencoders import IdentityAutoencoder, KLAutoencoder, VQAutoencoder
from transfusion.config import load_config
from transfusion.samplers import check_sampler
from transfusion.diffusion import Diffusion
from transfusion.engine import Request, resolve_clip
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


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++sde"])  # the two that draw noise at every step
def test_rows_with_their_own_generators_match_sampling_them_alone(sampler):
    diffusion = Diffusion()
    x0 = torch.rand(3, 4, 8, 8) * 2 - 1
    noisy_oracle = lambda x, t: oracle_for(diffusion, x0[: len(x)])(x, t) * 0.9  # noqa: E731  (not exact: DDPM noise matters)
    batched = sample(noisy_oracle, x0.shape, diffusion, sampler, 10, [torch.Generator().manual_seed(i) for i in range(3)])
    for i in range(3):
        alone_oracle = lambda x, t, i=i: oracle_for(diffusion, x0[i : i + 1])(x, t) * 0.9  # noqa: E731
        alone = sample(alone_oracle, (1, 4, 8, 8), diffusion, sampler, 10, [torch.Generator().manual_seed(i)])
        assert torch.allclose(batched[i], alone[0], atol=1e-5)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_with_eta_draws_fresh_noise_and_an_oracle_still_lands(eta):
    diffusion, x0 = Diffusion(), torch.rand(2, 4, 8, 8) * 2 - 1
    out = sample(oracle_for(diffusion, x0), x0.shape, diffusion, "ddim", 20, torch.Generator().manual_seed(0), clip=0,
                 eta=eta)
    assert torch.allclose(out, x0, atol=1e-4)
    inexact = lambda x, t: oracle_for(diffusion, x0)(x, t) * 0.9  # noqa: E731  (noise only matters when inexact)
    runs = [sample(inexact, x0.shape, diffusion, "ddim", 20, torch.Generator().manual_seed(0), clip=0, eta=e)
            for e in (eta, eta, 0.0)]
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])  # seeded noise, and it is drawn
    with pytest.raises(ValueError, match="eta"):
        sample(inexact, x0.shape, diffusion, "dpm++", 20, eta=0.5)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_strength_starts_from_the_init_noised_part_of_the_way(sampler):
    """Image to image (SDEdit): a share of the steps, from the init noised to the first kept
    level; an oracle of the init gives it back, an oracle of another image gives that image."""
    diffusion, steps = Diffusion(), {"ddpm": 250, "ddim": 20}.get(sampler, 25)
    init, other = torch.rand(2, 4, 8, 8) * 2 - 1, torch.rand(2, 4, 8, 8) * 2 - 1
    seen = []

    def recording(x0):
        def predict(x, t):
            seen.append((x.clone(), int(t[0])))
            return oracle_for(diffusion, x0)(x, t)
        return predict

    out = sample(recording(init), init.shape, diffusion, sampler, steps, torch.Generator().manual_seed(0), clip=0,
                 init=init, strength=0.4)
    assert torch.allclose(out, init, atol=1e-4) and len(seen) == round(0.4 * steps)
    x_first, t_first = seen[0]
    a = diffusion.alpha_bar[t_first]
    noise = torch.randn(init.shape, generator=torch.Generator().manual_seed(0))
    assert t_first < 0.45 * diffusion.T and torch.allclose(x_first, a.sqrt() * init + (1 - a).sqrt() * noise, atol=1e-5)
    seen.clear()
    moved = sample(recording(other), init.shape, diffusion, sampler, steps, torch.Generator().manual_seed(0), clip=0,
                   init=init, strength=0.4)
    assert torch.allclose(moved, other, atol=1e-4)
    with pytest.raises(ValueError, match="strength"):
        sample(recording(init), init.shape, diffusion, sampler, steps, init=init, strength=0)


def test_schedulers_use_this_librarys_schedule():
    """Scheduler index k holds our t = k + 1 of the cosine schedule, written out here on its own:
    alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) * pi / 2), s = 0.008."""
    import math

    diffusion = Diffusion()
    T, s = diffusion.T, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    closed_form = torch.tensor([f(t) / f(0) for t in range(1, T + 1)], dtype=torch.float64)
    unclipped = slice(0, T - 30)  # the last few betas are clipped at 0.999, which the formula does not know
    for name in SAMPLERS:
        scheduler = make_scheduler(name, diffusion)
        assert torch.allclose(scheduler.alphas_cumprod.double()[unclipped], closed_form[unclipped], rtol=1e-4)
        assert float(scheduler.alphas_cumprod[-1]) < 1e-4 and float(scheduler.alphas_cumprod[0]) > 0.9999
    with pytest.raises(ValueError, match="unknown sampler 'lms'"):
        make_scheduler("lms", diffusion)
    with pytest.raises(ValueError, match="sampler 'heun' does not sample diffusion.objective=ddpm"):
        make_scheduler("heun", diffusion)


def test_latents_are_clamped_at_3_by_default_a_guard_that_costs_an_exact_model_little():
    """sampling.clip_sample follows the autoencoder: 1 for pixels, 3 for unit-spread latents (once 1 for
    all, which pulls latents towards [-1, 1]: RMSE ~0.4 even with a perfect oracle; then off, under
    which a small trained model's latents diverged to a spread of ~1,500: see the next test)."""
    cfg = load_config("debug")
    assert cfg.sampling.clip_sample == -1
    assert resolve_clip(cfg.sampling.clip_sample, IdentityAutoencoder()) == 1.0
    for ae in (KLAutoencoder(), VQAutoencoder()):
        assert resolve_clip(cfg.sampling.clip_sample, ae) == 3.0
        assert Request().resolve(cfg, ae).clip == 3.0
    assert Request(clip=0.0).resolve(cfg, KLAutoencoder()).clip == 0.0  # a request still chooses
    assert resolve_clip(load_config("0.16B").sampling.clip_sample, KLAutoencoder()) == 3.0

    diffusion = Diffusion()
    x0 = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # latents: N(0, 1)
    rmse = lambda clip: (sample(oracle_for(diffusion, x0), x0.shape, diffusion, "dpm++", 25,  # noqa: E731
                                torch.Generator().manual_seed(0), clip=clip) - x0).square().mean().sqrt()
    assert rmse(0.0) < 1e-3 and rmse(1.0) > 0.3 and rmse(3.0) < 0.15, (rmse(0.0), rmse(1.0), rmse(3.0))


def test_a_slightly_wrong_model_diverges_unclamped_and_the_latent_guard_holds_it():
    """alpha_bar(T) = 2.4e-9: at the first steps an eps error reaches x0 magnified up to 20,000
    times. The best denoiser of N(0, I) latents (eps = sqrt(1 - alpha_bar) x_t), off by 1%, makes
    DPM-Solver++ samples of spread ~11 unclamped; the guard keeps them near 1."""
    diffusion = Diffusion()

    def one_percent_off(x, t):
        ab = diffusion.alpha_bar[t].float().view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * x * 1.01

    spread = lambda clip: sample(one_percent_off, (4, 4, 8, 8), diffusion, "dpm++", 25,  # noqa: E731
                                 torch.Generator().manual_seed(0), clip=clip).std()
    assert spread(0.0) > 5 and 0.7 < spread(3.0) < 1.3, (spread(0.0), spread(3.0))


def test_ddim_refuses_step_counts_that_miss_the_noise_levels():
    """DDIM steps from t to t - T // steps: with 30 steps the grid has gaps of 33 and 34, so some
    updates would assume the wrong noise level. Such counts are refused; dividing counts are exact."""
    diffusion = Diffusion()
    with pytest.raises(ValueError, match="ddim needs a step count that divides the 1000 training timesteps.*25 or 40"):
        check_sampler("ddim", 30, 1000)
    with pytest.raises(ValueError, match="divides"):
        sample(lambda x, t: x, (1, 4, 8, 8), diffusion, "ddim", 30)
    with pytest.raises(ValueError, match="divides"):
        Request(sampler="ddim", steps=30).resolve(load_config("debug"), IdentityAutoencoder())
    gaps = make_scheduler("ddim", diffusion)
    gaps.set_timesteps(30)
    assert set((gaps.timesteps[:-1] - gaps.timesteps[1:]).tolist()) == {33, 34}  # why 30 is refused
    check_sampler("dpm++", 30, 1000)  # DPM-Solver++ steps on its own sigma grid: any count works
    x0 = torch.rand(2, 4, 8, 8) * 2 - 1
    for sampler, steps in (("ddim", 40), ("dpm++", 30)):
        out = sample(oracle_for(diffusion, x0), x0.shape, diffusion, sampler, steps, clip=0)
        assert torch.allclose(out, x0, atol=1e-4), (sampler, (out - x0).abs().max())
