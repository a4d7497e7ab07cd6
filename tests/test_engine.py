"""The cached engine gives what recomputing the whole sequence gives."""

import dataclasses

import pytest
import torch

from transfusion.autoencoders import IdentityAutoencoder, VQAutoencoder
from transfusion.batch import ImageGroup
from transfusion.config import load_config
from transfusion.data.document import Image, Text
from transfusion.data.packing import layout, pack
from transfusion.diffusion import CONTEXT_T, Diffusion
from transfusion.engine import Engine, Request
from transfusion.engine.images import DiffusionImages, Forward, MakerSettings, TokenImages
from transfusion.model.transfusion import Transfusion
from transfusion.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def engine():
    cfg = load_config("debug", overrides=["image.adapter=unet", "image.patch_size=1"])
    model = Transfusion(cfg.model, cfg.image, ByteTokenizer().vocab_size, 3, seed=cfg.train.seed)
    with torch.no_grad():  # wider attention weights than the init's: an untrained model that reads its prompt
        for block in model.trunk.blocks:
            block.attn.qkv.weight.mul_(4)
            block.attn.out.weight.mul_(4)
    return Engine(model, ByteTokenizer(), IdentityAutoencoder(), cfg)


def recompute(engine, prompt, extra_ids, noisy=None, t=None):
    """Hidden states and noise of the whole sequence in one uncached forward."""
    tok, model = engine.tok, engine.model
    segs = list(prompt)
    latents = [s.pixels for s in segs if isinstance(s, Image)]
    lay = layout(segs, latents, [0] * len(latents), tok, model.num_patches, close=False)
    lay.ids.extend(extra_ids)
    if noisy is not None:  # a trailing image being denoised at timestep t
        lay.ids.append(tok.boi_id)
        lay.images.append((len(lay.ids), noisy, 0))
        lay.ids.extend([-1] * model.num_patches(tuple(noisy.shape[1:])))
    batch, _ = pack([lay], 1, len(lay.ids), tok.pad_id)
    ts = torch.full((len(batch.latents),), CONTEXT_T, dtype=torch.long)  # clean context images
    if t is not None:
        ts[-1] = t
    groups = [batch.image_group(ids, torch.stack([batch.latents[i] for i in ids]), ts[ids])
              for ids in batch.shape_groups()]
    with torch.no_grad():
        hidden, noise = model(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, groups)
    return hidden[0], noise, batch


PROMPTS = [
    [Text("a red circle")],
    [Text("x")],
    [Text("first"), Image(torch.rand(3, 16, 16) * 2 - 1), Text("then a longer bit of text")],
]


def test_text_decoding_with_cache_equals_recompute(engine):
    cache, positions, last = engine.prefill(PROMPTS)
    fed = torch.tensor([ord("a"), ord("b"), ord("c")])  # byte tokens
    active = torch.ones(3, dtype=torch.bool)
    steps = [last]
    for _ in range(3):
        steps.append(engine.step_text(cache, fed, positions, active))
    for b, prompt in enumerate(PROMPTS):
        hidden, _, _ = recompute(engine, prompt, [int(fed[b])] * 3)
        expected = hidden[-4:]  # the prompt's last position, then the three fed tokens
        got = torch.stack([s[b] for s in steps])
        assert torch.allclose(got, expected, atol=1e-4), (b, (got - expected).abs().max())


def test_denoising_step_with_cache_equals_recompute(engine):
    cache, positions, _ = engine.prefill(PROMPTS)
    active = torch.ones(3, dtype=torch.bool)
    engine.step_text(cache, torch.full((3,), engine.tok.boi_id), positions, active)
    rows = torch.tensor([0, 2])
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([700, 700])
    n = engine.model.num_patches((16, 16))
    both, pos = cache.rows(rows), positions[rows]
    arange = torch.arange(n)
    with torch.no_grad():
        _, (eps,) = engine.run(both, torch.full((2, n), engine.tok.pad_id), pos[:, None] + arange,
                               torch.zeros(2, n, dtype=torch.long), torch.full((2, n), 99),
                               [ImageGroup(x, t, torch.arange(2)[:, None] * n + arange)], write=False)
    assert cache.length == both.length  # a denoising step writes nothing
    for i, b in enumerate(rows.tolist()):
        _, noise, _ = recompute(engine, PROMPTS[b], [], noisy=x[i], t=700)
        (group,) = noise  # one latent shape: the noisy image is the last in the group
        assert torch.allclose(eps[i], group[-1], atol=1e-4), (b, (eps[i] - group[-1]).abs().max())


def test_batched_generation_equals_one_by_one(engine):
    req = Request(max_new_tokens=6, steps=3, guidance=2.0, temperature=1.0, top_k=20, seed=5)
    batched = engine.generate(PROMPTS, req, force_image=True)
    for b, (prompt, out) in enumerate(zip(PROMPTS, batched)):
        alone = engine.generate([prompt], Request(**{**req.__dict__, "seed": req.seed + b}), force_image=True)[0]
        assert [type(s) for s in out] == [type(s) for s in alone] and isinstance(out[0], Image)
        for x, y in zip(out, alone):
            if isinstance(x, Image):
                # a batch of other shapes sums in another order (float32: ~1e-6), which three guided
                # denoising steps of this sharpened model can grow to 3.3e-3 (measured once in a full
                # run on 2 threads); a batching bug is ~0.1 or more
                assert torch.allclose(x.pixels, y.pixels, atol=1e-2), (x.pixels - y.pixels).abs().max()
            else:
                assert x.text == y.text


def images_of(outputs):
    return [s.pixels for out in outputs for s in out if isinstance(s, Image)]


def test_generation_with_cache_equals_recomputing_every_prefix(engine):
    """Whole interleaved generations (two images per row, prompts of different lengths, CFG)
    match an engine that recomputes each prefix at every denoising step."""
    reference = Engine(engine.model, engine.tok, engine.ae, engine.config, cache_prefix=False)
    for sampler in ("ddpm", "dpm++"):
        req = Request(max_new_tokens=8, max_images=2, steps=3, guidance=2.0, sampler=sampler, seed=1)
        cached, recomputed = engine.generate(PROMPTS, req, force_image=True), reference.generate(PROMPTS, req, True)
        assert [[type(s) for s in o] for o in cached] == [[type(s) for s in o] for o in recomputed]
        for x, y in zip(images_of(cached), images_of(recomputed)):
            assert torch.allclose(x, y, atol=1e-4), (sampler, (x - y).abs().max())


def test_guidance_scale_one_equals_the_conditional_branch(engine):
    """Scale 1 skips the unconditional rows; a scale a hair above 1 runs them in the same batch
    and must give the same image, so the extra rows do not disturb the conditional ones."""
    def image(scale):
        return images_of(engine.generate(PROMPTS, Request(max_new_tokens=1, steps=4, guidance=scale), True))

    conditional, batched = image(1.0), image(1.0 + 1e-6)
    for x, y in zip(conditional, batched):
        assert torch.allclose(x, y, atol=1e-3), (x - y).abs().max()
    change = (conditional[0] - image(3.0)[0]).abs().max()
    assert change > 3e-3, change  # guidance does change the image (10x the batching noise above)


def test_image_guidance_uses_the_images_without_the_text(engine):
    """With text scale 0 and image scale 1 the noise is the image-only branch's: the same image
    as conditioning on the prompt's image alone."""
    picture = Image(torch.rand(3, 16, 16) * 2 - 1)
    edit = [[picture, Text("make it red")]]
    req = Request(max_new_tokens=1, steps=3, seed=4)
    image_only = engine.generate(edit, dataclasses.replace(req, guidance=0.0, image_guidance=1.0), True)
    alone = engine.generate([[picture]], dataclasses.replace(req, guidance=1.0), True)
    assert torch.allclose(images_of(image_only)[0], images_of(alone)[0], atol=1e-4)
    both = engine.generate(edit, dataclasses.replace(req, guidance=5.0, image_guidance=0.0), True)
    assert (images_of(both)[0] - images_of(alone)[0]).abs().max() > 1e-3  # well above float error (an untrained model barely reads text)
    # a prompt without images has no image branch: its image scale changes nothing
    text = [[Text("a red circle")]]
    plain = engine.generate(text, dataclasses.replace(req, guidance=2.0), True)
    scaled = engine.generate(text, dataclasses.replace(req, guidance=2.0, image_guidance=7.0), True)
    assert torch.equal(images_of(plain)[0], images_of(scaled)[0])


def test_stop_strings_and_limits(engine):
    greedy = engine.generate([[Text("a")]], Request(max_new_tokens=12, max_images=0))[0]
    text = "".join(s.text for s in greedy)
    assert greedy and all(isinstance(s, Text) for s in greedy)
    stopped = engine.generate([[Text("a")]], Request(max_new_tokens=12, max_images=0, stop=[text[:2]]))[0]
    assert stopped[0].text == text[:2]
    no_images = engine.generate([[Text("a")]], Request(max_new_tokens=4, max_images=0), force_image=True)[0]
    assert no_images == []


def test_engine_errors(engine):
    with pytest.raises(ValueError, match="model.max_seq_len"):
        engine.prefill([[Text("x" * 400)]])
    with pytest.raises(ValueError, match="not divisible"):
        engine.generate([[Text("a")]], Request(image_size=17), force_image=True)
    with pytest.raises(ValueError, match="unknown sampler 'lms'; choose one of ddpm, ddim, dpm\\+\\+"):
        engine.generate([[Text("a")]], Request(sampler="lms"), force_image=True)
    with pytest.raises(ValueError, match="sampler 'euler' does not sample diffusion.objective=ddpm"):
        engine.generate([[Text("a")]], Request(sampler="euler"), force_image=True)
    with pytest.raises(ValueError, match="sampling steps must be in 1..1000"):
        engine.generate([[Text("a")]], Request(steps=5000), force_image=True)
    with pytest.raises(ValueError, match="top_p"):
        engine.generate([[Text("a")]], Request(temperature=1.0, top_p=0.0))
    with pytest.raises(ValueError, match="does not fit in the context"):  # prompt fits, its image does not
        engine.generate([[Text("x" * 250)]], Request(max_new_tokens=1), force_image=True)


def test_clean_context_images_are_fed_at_a_trained_timestep(engine, monkeypatch):
    """Training draws t in 1..T, never 0: a prompt's image and a finished image enter the
    context at CONTEXT_T = 1, the smallest trained t (they used to enter at t = 0)."""
    drawn = Diffusion().sample_t(torch.full((20_000,), 1000), torch.Generator().manual_seed(0))
    assert int(drawn.min()) == 1 == CONTEXT_T and int(drawn.max()) == 1000
    seen = []
    forward = type(engine.model).forward

    def spy(model, tokens, positions, doc_ids, image_ids, images=(), **kwargs):
        seen.extend(int(t) for group in images for t in group.t)
        return forward(model, tokens, positions, doc_ids, image_ids, images, **kwargs)

    monkeypatch.setattr(type(engine.model), "forward", spy)
    picture = Image(torch.rand(3, 16, 16) * 2 - 1)
    engine.prefill([[picture, Text("a")]])
    assert seen == [CONTEXT_T]
    seen.clear()
    engine.generate([[Text("a")]], Request(max_new_tokens=2, steps=3, sampler="dpm++"),
                    force_image=True)
    denoising, written = seen[:-1], seen[-1]
    assert written == CONTEXT_T and min(denoising) >= 1  # the finished image goes in clean, at t = 1


class RecordingForward:
    """A stand-in for the image makers' ``Forward``: its operations and nothing else, each
    recorded, then done by ``inner``."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        if name not in FORWARD_OPS:
            raise AttributeError(f"{name} is not part of the Forward interface")
        op = getattr(self.inner, name)

        def call(*args, **kwargs):
            self.calls.append(name)
            return op(*args, **kwargs)

        return call


FORWARD_OPS = {"run", "mask", "logits", "step_text", "after_boi"}


def made_through(engine, monkeypatch, build, prompts, req):
    """Images ``engine`` generates with its own maker, and with ``build(recording, settings)``
    put in its place; and the operations the stand-in saw."""
    maker = engine.image_maker
    assert isinstance(maker.settings, MakerSettings)
    assert not any(isinstance(v, Engine) for v in vars(maker).values())  # never the Engine
    expected = images_of(engine.generate(prompts, req, force_image=True))
    recording = RecordingForward(engine.forward)
    monkeypatch.setattr(engine, "image_maker", build(recording, maker.settings))
    got = images_of(engine.generate(prompts, req, force_image=True))
    monkeypatch.undo()
    return expected, got, set(recording.calls)


def test_image_makers_work_against_the_narrow_forward_interface(engine, monkeypatch):
    """The makers hold a ``Forward`` and plain settings; against a stand-in that records what
    they call they make the very same images (diffusion, cached and recomputed, and VQ tokens)."""
    assert {n for n in vars(Forward) if not n.startswith("_")} == FORWARD_OPS
    req = Request(max_new_tokens=2, steps=2, guidance=2.0, seed=3)
    reference = Engine(engine.model, engine.tok, engine.ae, engine.config, cache_prefix=False)
    for e in (engine, reference):
        diffusion = e.image_maker.diffusion
        expected, got, calls = made_through(e, monkeypatch, lambda f, s: DiffusionImages(f, s, diffusion),
                                            PROMPTS, req)
        assert len(got) == len(PROMPTS) and all(torch.equal(x, y) for x, y in zip(expected, got))
        assert calls == {"after_boi", "mask", "run"}  # the unconditional branch, the mask, the steps and write

    vq = VQAutoencoder(codebook_size=32, code_dim=4, downsample=4, width=8).eval()
    cfg = load_config("debug", overrides=["image.objective=tokens"])
    tokens = Engine(Transfusion.build(cfg.model, cfg.image, engine.tok, vq, cfg.train.seed), engine.tok, vq, cfg)
    expected, got, calls = made_through(tokens, monkeypatch, TokenImages, PROMPTS[:2],
                                        dataclasses.replace(req, guidance=3.0, temperature=1.0))
    assert len(got) == 2 and all(torch.equal(x, y) for x, y in zip(expected, got))
    assert calls == {"after_boi", "logits", "step_text", "run"}
