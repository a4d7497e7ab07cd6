"""The Chameleon-style baseline: VQ autoencoder, images as tokens, token-by-token image sampling;
and the causal intra-image attention ablation."""

import dataclasses

import pytest
import torch

from transfusion.autoencoders import VQAutoencoder, codebook_stats, load_autoencoder, save_autoencoder, train_autoencoder
from transfusion.components import build_components
from transfusion.config import load_config
from transfusion.data.document import Image, Text
from transfusion.data.packing import IGNORE, layout, pack
from transfusion.data.shapes import ShapesDataset
from transfusion.engine import Engine, Request
from transfusion.model.transfusion import Transfusion
from transfusion.objective import compute_losses
from transfusion.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def vq():
    torch.manual_seed(0)
    model = VQAutoencoder(codebook_size=32, code_dim=4, downsample=4, width=8)
    return model.eval()


def test_vq_training_lowers_reconstruction_error_and_uses_the_codebook():
    torch.manual_seed(0)
    model = VQAutoencoder(codebook_size=64, code_dim=8, downsample=4, width=8, restart_every=50)
    test = ShapesDataset("test", size=16)
    pixels = torch.stack([test[i].images[0].pixels for i in range(64)])
    before = (model.detokenize(model.tokenize(pixels)) - pixels).square().mean().item()
    metrics = train_autoencoder(model, ShapesDataset("train", size=16), steps=150, batch_size=16, progress=False)
    codes = model.tokenize(pixels)
    after = (model.detokenize(codes) - pixels).square().mean().item()
    assert codes.shape == (64, 4, 4) and codes.dtype == torch.long
    assert after < 0.4 * before, (before, after)
    assert codebook_stats(codes, 64)["usage"] > 0.25, metrics  # dead-code restarts keep codes alive


def test_vq_round_trips_through_save_and_load(vq, tmp_path):
    save_autoencoder(vq, tmp_path / "vq")
    loaded = load_autoencoder(tmp_path / "vq")
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    assert isinstance(loaded, VQAutoencoder) and loaded.codebook_size == 32
    assert torch.equal(loaded.tokenize(pixels), vq.tokenize(pixels))
    assert torch.allclose(loaded.decode(loaded.encode(pixels)), vq.detokenize(vq.tokenize(pixels)), atol=1e-6)


def test_vq_rejects_bad_codes(vq):
    with pytest.raises(ValueError, match="codes must lie in"):
        vq.detokenize(torch.full((1, 4, 4), 32, dtype=torch.long))
    with pytest.raises(ValueError, match="expected long codes"):
        vq.detokenize(torch.zeros(1, 4, 4))


def test_images_become_code_tokens_with_next_token_targets(vq):
    tok = ByteTokenizer()
    image = torch.rand(3, 16, 16) * 2 - 1
    lay = layout([Text("ab"), Image(image)], [image], [1000], tok, lambda hw: 16)
    batch, _ = pack([lay], 1, 32, tok.pad_id)
    codes = vq.tokenize(image[None])[0]
    out = batch.images_as_tokens([codes], offset=tok.vocab_size)
    ids = [tok.bos_id, ord("a"), ord("b"), tok.boi_id, *(codes.flatten() + tok.vocab_size).tolist(), tok.eoi_id,
           tok.eos_id]
    assert out.tokens[0, : len(ids)].tolist() == ids
    assert out.targets[0, : len(ids) - 1].tolist() == ids[1:]  # every next token, codes included
    assert (out.targets[0, len(ids) - 1 :] == IGNORE).all()  # none from the last token or padding
    assert (out.image_ids == -1).all() and not out.latents and not out.index


def tokens_setup(vq, *overrides):
    cfg = load_config("debug", overrides=["image.objective=tokens", *overrides])
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = Transfusion.build(cfg.model, cfg.image, tok, vq, cfg.train.seed)
    return cfg, tok, model


def test_tokens_objective_needs_a_vq_autoencoder():
    from transfusion.autoencoders import IdentityAutoencoder

    cfg = load_config("debug", overrides=["image.objective=tokens"])
    with pytest.raises(ValueError, match="needs a VQ autoencoder"):
        Transfusion.build(cfg.model, cfg.image, ByteTokenizer(), IdentityAutoencoder())


def test_tokens_objective_trains_on_text_and_image_tokens(vq):
    cfg, tok, model = tokens_setup(vq)
    assert model.image is None and model.lm_head.out_features == tok.vocab_size + 32
    batch = build_components(cfg, tokenizer=tok, autoencoder=vq, model=model).batches.batch_at(0, seed=0)
    assert (batch.tokens >= tok.vocab_size).any() and not batch.latents
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    with torch.no_grad():
        before = {k: v.item() for k, v in compute_losses(model, batch, None, 5.0).items()}
    for _ in range(40):
        out = compute_losses(model, batch, None, 5.0)
        opt.zero_grad()
        out["total"].backward()
        opt.step()
    with torch.no_grad():
        after = {k: v.item() for k, v in compute_losses(model, batch, None, 5.0).items()}
    assert set(after) == {"lm", "image_ce", "total"}
    assert after["lm"] < 0.5 * before["lm"] and after["image_ce"] < 0.7 * before["image_ce"], (before, after)


def test_image_tokens_with_cache_are_what_a_full_forward_predicts(vq):
    """Greedy codes without guidance equal the argmax of one uncached forward over the result."""
    cfg, tok, model = tokens_setup(vq)
    engine = Engine(model, tok, vq, cfg)
    req = Request(guidance=1.0, image_temperature=0.0).resolve(cfg, vq)
    cache, positions, boi_hidden = engine.after_boi([([Text("a red circle")], [])])
    codes = engine.image_maker.make(cache, torch.tensor([0]), positions, req, [torch.Generator()], [], boi_hidden)
    assert codes.shape == (1, 4, 4)
    ids = [tok.bos_id, *tok.encode("a red circle"), tok.boi_id]
    seq = torch.tensor([ids + (codes.flatten() + tok.vocab_size).tolist()])
    L = seq.shape[1]
    with torch.no_grad():
        hidden, _ = model(seq, torch.arange(L)[None], torch.zeros(1, L, dtype=torch.long),
                          torch.full((1, L), -1, dtype=torch.long))
        logits = model.logits(hidden[0, len(ids) - 1 : L - 1])[:, tok.vocab_size :]
    assert logits.argmax(-1).tolist() == codes.flatten().tolist()


def test_image_token_sampling_is_per_row_seeded_and_guided(vq):
    cfg, tok, model = tokens_setup(vq)
    with torch.no_grad():  # an untrained model's near-uniform logits: sharpen them so the prompt matters
        model.lm_head.weight.mul_(100)
    engine = Engine(model, tok, vq, cfg)
    prompts = [[Text("a red circle")], [Text("two blue squares")]]
    req = Request(guidance=3.0, seed=5, max_new_tokens=1)
    together = engine.generate(prompts, req, force_image=True)
    alone = engine.generate(prompts[1:], dataclasses.replace(req, seed=6), force_image=True)
    assert together[1][0].pixels.shape == (3, 16, 16)
    # the same codes; decoding two images at once may round differently from one (batched convolutions)
    torch.testing.assert_close(together[1][0].pixels, alone[0][0].pixels, atol=1e-5, rtol=0)
    unguided = engine.generate(prompts[1:], dataclasses.replace(req, seed=6, guidance=1.0), force_image=True)
    assert not torch.equal(unguided[0][0].pixels, alone[0][0].pixels)


def test_tokens_model_captions_images_given_as_codes(vq):
    cfg, tok, model = tokens_setup(vq)
    engine = Engine(model, tok, vq, cfg)
    image = Image(torch.rand(3, 16, 16) * 2 - 1)
    (out,) = engine.generate([[image]], Request(max_new_tokens=5, min_new_tokens=1, max_images=0))
    assert len(out) == 1 and isinstance(out[0], Text) and 1 <= len(out[0].text) <= 5  # one Text of 1-5 bytes
    cache, positions, _ = engine.prefill([[image]])
    assert int(positions[0]) == 1 + 1 + 16 + 1  # BOS BOI 16 codes EOI


def test_causal_intra_image_attention():
    """With image.attention=causal a patch's noise prediction ignores the patches after it."""
    def first_patch_noise(attention, later):
        cfg = load_config("debug", overrides=["image.adapter=linear", "image.patch_size=2",
                                              f"image.attention={attention}"])
        torch.manual_seed(0)
        model = Transfusion(cfg.model, cfg.image, ByteTokenizer().vocab_size, 3, seed=cfg.train.seed).eval()
        tok = ByteTokenizer()
        latent = torch.zeros(3, 16, 16)
        latent[:, 8:, :] = later  # only the lower patches change
        lay = layout([Text("a"), Image(latent)], [latent], [1000], tok, model.num_patches)
        batch, _ = pack([lay], 1, len(lay.ids), tok.pad_id)
        group = batch.image_group([0], latent[None], torch.tensor([500]))
        with torch.no_grad():
            _, (noise,) = model(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, [group])
        return noise[0, :, :2, :2]  # the first 2x2 patch

    assert torch.allclose(first_patch_noise("causal", 0.0), first_patch_noise("causal", 1.0), atol=1e-6)
    assert not torch.allclose(first_patch_noise("bidirectional", 0.0), first_patch_noise("bidirectional", 1.0),
                              atol=1e-4)


@pytest.mark.parametrize("objective", ["diffusion", "tokens"])
def test_caption_perplexity_counts_the_caption_and_boi_only(vq, objective):
    """Before the image: one target per caption token plus BOI, for either image objective."""
    from transfusion.checkpoint import Loaded
    from transfusion.data.document import Document
    from transfusion.evaluate import perplexity

    cfg = load_config("debug", overrides=[f"image.objective={objective}"])
    tok = ByteTokenizer()
    model = Transfusion.build(cfg.model, cfg.image, tok, vq, cfg.train.seed).eval()
    docs = [Document.pair("a red circle", torch.rand(3, 16, 16) * 2 - 1),
            Document.pair("two", torch.rand(3, 16, 16) * 2 - 1)]
    loaded = Loaded(model, tok, vq, cfg, 0, None)
    caption = perplexity(loaded, docs, before_image=True)
    assert caption["targets"] == (len("a red circle") + 1) + (len("two") + 1)
    assert caption["text_bytes"] == len("a red circle") + len("two")
    whole = perplexity(loaded, docs)
    assert whole["targets"] == caption["targets"] + 2 * (1 if objective == "diffusion" else 2)  # EOS (+ EOI)
    # a softmax over the text vocabulary alone: the same for Transfusion, lower where the head also scores codes
    if objective == "diffusion":
        assert caption["perplexity_text_only"] == pytest.approx(caption["perplexity"])
    else:
        assert caption["perplexity_text_only"] < caption["perplexity"]


def test_min_new_tokens_keeps_a_caption_from_ending_at_once(vq):
    cfg, tok, model = tokens_setup(vq)
    engine = Engine(model, tok, vq, cfg)
    image = [Image(torch.rand(3, 16, 16) * 2 - 1)]

    def ends_first(hidden):  # a model that always wants to end: EOS wins every greedy step
        return torch.zeros(hidden.shape[0], model.lm_head.out_features).index_fill(1, torch.tensor([tok.eos_id]), 50.0)

    model.logits = ends_first
    assert engine.generate([image], Request(max_new_tokens=5, max_images=0)) == [[]]
    (out,) = engine.generate([image], Request(max_new_tokens=5, min_new_tokens=2, max_images=0))
    assert len(tok.encode(out[0].text)) >= 2
    with pytest.raises(ValueError, match="min_new_tokens"):
        Request(max_new_tokens=2, min_new_tokens=3).resolve(cfg, vq)
