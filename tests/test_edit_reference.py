"""Editing beyond the sequence: the source fed to the output's adapter (``image.edit_reference``)
and image-to-image sampling from the noised source (``Request.strength``)."""

import dataclasses
import random

import pytest
import torch

from transfusion.autoencoders import IdentityAutoencoder
from transfusion.config import load_config
from transfusion.data.document import Image, Text
from transfusion.data.edits import EditsDataset
from transfusion.data.packing import PackedBatch, arrange, layout, pack
from transfusion.diffusion import Diffusion
from transfusion.engine import Engine, Request, tasks
from transfusion.model.transfusion import Transfusion
from transfusion.objective import compute_losses
from transfusion.tokenizer import ByteTokenizer

REFERENCE = ["image.edit_reference=true"]


def _batch(model, tok, cfg, arrangements):
    """One packed batch of edit documents arranged as given (a list of (segments, caps))."""
    lays = [layout(segs, [s.pixels for s in segs if isinstance(s, Image)], caps, tok, model.num_patches)
            for segs, caps in arrangements]
    return pack(lays, len(lays), cfg.data.seq_len, tok.pad_id, one_per_row=True)[0]


def _arrangements(cfg):
    """Edit documents in each of their three training arrangements (full, image only, unconditional)."""
    docs, rng, seen = EditsDataset("train", size=16), random.Random(0), {}
    for i in range(200):
        segs, caps = arrange(docs[i], rng, cfg.diffusion)
        seen.setdefault(len(segs), (segs, caps))
        if len(seen) == 3:
            return [seen[3], seen[2], seen[1]]
    raise AssertionError("not every arrangement drawn")


def test_an_edits_output_references_its_source_and_nothing_else_does():
    cfg = load_config("debug", overrides=REFERENCE)
    tok = ByteTokenizer()
    model = Transfusion.build(cfg.model, cfg.image, tok, IdentityAutoencoder(), seed=0)
    batch = _batch(model, tok, cfg, _arrangements(cfg))
    # images: [source, target] (full), [source, target] (image only), [target] (unconditional)
    assert batch.reference.tolist() == [-1, 0, -1, 2, -1]
    both = PackedBatch.concat([batch, batch])
    assert both.reference.tolist() == [-1, 0, -1, 2, -1, -1, 5, -1, 7, -1]
    ids = [1, 3, 4]  # the three targets
    group = both.image_group(ids, torch.stack([both.latents[i] for i in ids]), torch.tensor([5, 5, 5]))
    assert torch.equal(group.reference[0], both.latents[0]) and torch.equal(group.reference[1], both.latents[2])
    assert not group.reference[2].any()  # the unconditional branch edits nothing
    plain = both.image_group([0, 4], torch.stack([both.latents[0], both.latents[4]]), torch.tensor([5, 5]))
    assert plain.reference is None


@pytest.mark.parametrize("adapter", [["image.adapter=unet"], ["image.adapter=linear", "image.patch_size=4"]])
def test_the_reference_layer_starts_at_zero_learns_and_then_reads_the_source(adapter):
    cfg, plain_cfg = load_config("debug", overrides=[*REFERENCE, *adapter]), load_config("debug", overrides=adapter)
    tok, ae = ByteTokenizer(), IdentityAutoencoder()
    model = Transfusion.build(cfg.model, cfg.image, tok, ae, seed=0)
    plain = Transfusion.build(plain_cfg.model, plain_cfg.image, tok, ae, seed=0)
    added = {k for k in model.state_dict() if ".reference_in." in k}
    assert added == {"image.reference_in.weight", "image.reference_in.bias"}
    assert all(not model.state_dict()[k].any() for k in added)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in plain.state_dict().items())
    batch = _batch(model, tok, cfg, _arrangements(cfg))
    batch.t, batch.noise = torch.full((5,), 300), [torch.randn_like(x) for x in batch.latents]
    same = [compute_losses(m, batch, Diffusion(), 5.0)["total"] for m in (model, plain)]
    assert torch.allclose(same[0], same[1])  # zero at the start: a fine-tune starts where its start was
    same[0].backward()
    assert model.image.reference_in.weight.grad.abs().sum() > 0  # and it learns from the sources

    with torch.no_grad():
        model.image.reference_in.weight.normal_(std=0.1)
    ids = [1, 3, 4]
    x, t = torch.stack([batch.latents[i] for i in ids]), torch.full((3,), 300)
    group = batch.image_group(ids, x, t)
    other = dataclasses.replace(group, reference=torch.flip(group.reference, dims=[-1]))
    run = lambda g: model(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, [g])[1][0]  # noqa: E731
    a, b = run(group), run(other)
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[2], b[2])  # only images that edit read it


def test_tokens_objective_refuses_the_reference():
    with pytest.raises(ValueError, match="edit_reference"):
        load_config("debug", overrides=[*REFERENCE, "image.objective=tokens"])


@pytest.fixture(scope="module")
def reference_run(debug_run, tmp_path_factory):
    """The shared debug run (no reference layer), fine-tuned on edits with one added."""
    from transfusion.cli import COMMANDS

    out = tmp_path_factory.mktemp("reference") / "run"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), f"train.init_from={debug_run}", *REFERENCE,
                       "data.edit_fraction=0.5", "train.steps=2", "train.eval_samples=2", "sampling.steps=2"])
    return out


def test_fine_tuning_adds_the_reference_and_edits_pass_the_source_to_it(debug_run, reference_run):
    from transfusion.checkpoint import load_checkpoint

    run, start = load_checkpoint(reference_run), load_checkpoint(debug_run)
    assert run.config.image.edit_reference and not start.config.image.edit_reference
    assert run.model.image.reference_in.weight.abs().sum() > 0  # trained from zero for two steps
    seen = []
    encode = run.model.image.encode

    def spy(latents, t, reference=None):
        seen.append(reference)
        return encode(latents, t, reference)

    run.model.image.encode = spy
    engine = Engine(run.model, run.tokenizer, run.autoencoder, run.config)
    doc = EditsDataset("test", size=16)[0]
    source, text = doc.segments[0].pixels, doc.segments[1].text
    tasks.edit(engine, [source], [text], Request(steps=2, guidance=3.0, image_guidance=1.5))
    denoising = [r for r in seen if r is not None]
    assert len(denoising) == 2 and all(r.shape[0] == 3 for r in denoising)  # 3 guidance branches, 2 steps
    latent = run.autoencoder.encode(source[None])[0]
    for r in denoising:  # conditional and image-only rows get the source, the unconditional zeros
        assert torch.allclose(r[0], latent) and not r[1].any() and torch.allclose(r[2], latent)
    seen.clear()
    engine.generate([[Text(text)]], Request(steps=2), force_image=True)  # text to image edits nothing
    assert all(r is None for r in seen)


def test_strength_runs_a_share_of_the_steps_and_needs_a_source(reference_run):
    from transfusion.checkpoint import load_checkpoint

    run = load_checkpoint(reference_run)
    calls = []
    engine = Engine(run.model, run.tokenizer, run.autoencoder, run.config, progress=lambda done, total: calls.append(total))
    doc = EditsDataset("test", size=16)[0]
    source, text = doc.segments[0].pixels, doc.segments[1].text
    out = tasks.edit(engine, [source], [text], Request(sampler="ddim", steps=10, strength=0.3)).images[0]
    assert out.shape == source.shape and calls and set(calls) == {3}
    with pytest.raises(ValueError, match="context's last image"):
        engine.generate([[Text(text)]], Request(steps=10, sampler="ddim", strength=0.3), force_image=True)
    with pytest.raises(ValueError, match="strength"):
        Request(strength=1.5).resolve(run.config, run.autoencoder)
