"""Mixture-of-Transformers (``model.mot=true``): a text and an image copy of every trunk norm
and projection, global attention, routing by modality."""

import json

import pytest
import torch

from transfusion.autoencoders import IdentityAutoencoder
from transfusion.components import build_components
from transfusion.config import load_config
from transfusion.data.document import Image, Text
from transfusion.diffusion import Diffusion
from transfusion.engine import Engine, Request
from transfusion.model.transformer import ByModality
from transfusion.model.transfusion import Transfusion
from transfusion.objective import compute_losses
from transfusion.tokenizer import ByteTokenizer

MOT = ["model.mot=true"]


def build(*overrides):
    cfg = load_config("debug", overrides=list(overrides))
    return cfg, Transfusion(cfg.model, cfg.image, ByteTokenizer().vocab_size, 3, seed=0)


def batches(cfg, model):
    return build_components(cfg, tokenizer=ByteTokenizer(), autoencoder=IdentityAutoencoder(), model=model).batches


def a_batch(cfg, model):
    batch = batches(cfg, model).batch_at(0, seed=0)
    assert batch.latents and batch.num_text_targets > 0
    return batch


def mot_copy_of(dense, mot):
    """Write the dense model's weights into both copies of every MoT layer."""
    weights = dense.state_dict()
    with torch.no_grad():
        for name, param in mot.named_parameters():
            param.copy_(weights[name.replace(".text.", ".").replace(".image.", ".")])


def run(model, batch):
    groups = [batch.image_group(ids, torch.stack([batch.latents[i] for i in ids]), batch.t[ids])
              for ids in batch.shape_groups()]
    return model(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, groups)


def test_every_trunk_norm_and_projection_has_two_copies_and_a_token_uses_one():
    cfg, dense = build()
    _, mot = build(*MOT)
    copies = [m for m in mot.trunk.modules() if isinstance(m, ByModality)]
    assert len(copies) == 5 * cfg.model.n_layers + 1  # attn norm, qkv, out, mlp norm, mlp; the final norm
    assert mot.num_params(trunk_only=True) == 2 * dense.num_params(trunk_only=True)
    assert mot.num_params(active=True) == dense.num_params() == dense.num_params(active=True)


def test_identical_copies_compute_what_the_dense_model_computes():
    cfg, dense = build()
    _, mot = build(*MOT)
    mot_copy_of(dense, mot)
    batch = a_batch(cfg, dense)
    with torch.no_grad():
        (h1, n1), (h2, n2) = run(dense, batch), run(mot, batch)
    assert torch.allclose(h1, h2, atol=1e-5) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(n1, n2))


def test_each_copy_sees_only_its_modality_and_text_alone_leaves_the_image_copies_untouched():
    cfg, mot = build(*MOT)
    batch = a_batch(cfg, mot)
    rows = {}
    for name, module in mot.trunk.named_modules():
        if isinstance(module, ByModality):
            for side in ("text", "image"):
                getattr(module, side).register_forward_hook(
                    lambda m, args, out, key=(name, side): rows.__setitem__(key, args[0].shape[0]))
    run(mot, batch)
    n_image = int((batch.image_ids >= 0).sum())
    assert {rows[(n, "image")] for n, _ in rows} == {n_image}
    assert {rows[(n, "text")] for n, _ in rows} == {batch.tokens.numel() - n_image}

    text_only = load_config("debug", overrides=[*MOT, "data.text_fraction=1.0", "data.interleaved_fraction=0"])
    batch = batches(text_only, mot).batch_at(0, seed=0)
    assert not batch.latents
    mot.zero_grad()
    compute_losses(mot, batch, Diffusion(), 5.0)["total"].backward()
    for module in (m for m in mot.trunk.modules() if isinstance(m, ByModality)):
        assert all(p.grad is None or not p.grad.any() for p in module.image.parameters())
        assert any(p.grad is not None and p.grad.any() for p in module.text.parameters())


def test_flops_per_token_match_the_dense_model():
    from torch.utils.flop_counter import FlopCounterMode

    cfg, dense = build()
    _, mot = build(*MOT)
    batch = a_batch(cfg, dense)
    flops = []
    for model in (dense, mot):
        with FlopCounterMode(display=False) as counter:
            compute_losses(model, batch, Diffusion(), 5.0)["total"].backward()
        flops.append(counter.get_total_flops())
    assert abs(flops[1] / flops[0] - 1) < 0.03, flops


def test_mot_generation_with_cache_equals_recomputing_every_prefix():
    cfg, mot = build(*MOT)
    tok, ae = ByteTokenizer(), IdentityAutoencoder()
    prompts = [[Text("a red circle")], [Text("first"), Image(torch.rand(3, 16, 16) * 2 - 1), Text("then")]]
    req = Request(max_new_tokens=3, steps=3, sampler="dpm++", guidance=2.0, seed=1)
    cached = Engine(mot, tok, ae, cfg).generate(prompts, req, force_image=True)
    recomputed = Engine(mot, tok, ae, cfg, cache_prefix=False).generate(prompts, req, force_image=True)
    for a, b in zip(cached, recomputed, strict=True):
        assert torch.allclose(a[0].pixels, b[0].pixels, atol=1e-4)


def test_a_mot_run_trains_checkpoints_and_samples(tmp_path):
    from transfusion.checkpoint import load_checkpoint
    from transfusion.cli import COMMANDS
    from transfusion.cli import main as cli

    out = tmp_path / "mot"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), "model.mot=true", "train.steps=2",
                       "train.eval_samples=2", "sampling.steps=2"])
    report = json.loads((out / "report.json").read_text())
    assert report["active_parameters"] < report["model_parameters"]
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["train_flops"] == pytest.approx(6 * report["active_parameters"] * row["tokens_seen"])
    loaded = load_checkpoint(out)
    assert loaded.config.model.mot and any(".image." in k for k in loaded.model.state_dict())
    cli(["generate", str(out), "a red circle", "--n", "1", "--steps", "2", "--out", str(tmp_path / "g")])
    assert (tmp_path / "g" / "000.png").is_file()


def test_the_chameleon_baseline_routes_its_image_codes_to_the_image_copies():
    from transfusion.autoencoders import VQAutoencoder

    cfg = load_config("debug", overrides=["model.mot=true", "image.objective=tokens"])
    vq = VQAutoencoder(codebook_size=16, code_dim=4, downsample=4, width=8)
    model = Transfusion.build(cfg.model, cfg.image, ByteTokenizer(), vq)
    seen = []
    model.trunk.norm.image.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    V = model.vocab_size
    tokens = torch.tensor([[1, 2, V, V + 3, V + 1, 5]])
    model(tokens, torch.arange(6)[None], torch.zeros(1, 6, dtype=torch.long), torch.full((1, 6), -1))
    assert seen == [3]


def test_freeze_text_trains_only_the_new_rows_and_weight_decay_spares_the_frozen_ones():
    """LMFusion (``model.freeze_text``): the pretrained rows of a tied embedding and LM head get exactly
    zero gradient and AdamW, weight decay included, leaves them bit-equal, as it leaves the text copies;
    the rows of the tokens added for images (BOI, EOI) train."""
    from transfusion.optim import build_optimizer

    cfg, model = build(*MOT, "model.tie_embeddings=true", "optim.weight_decay=0.5", "optim.lr=1e-2")
    tok = ByteTokenizer()
    new = [tok.boi_id, tok.eoi_id]
    model.freeze_text(new)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer, batch = build_optimizer(model, cfg), a_batch(cfg, model)
    for _ in range(3):
        optimizer.zero_grad()
        compute_losses(model, batch, Diffusion(), 5.0)["total"].backward()
        optimizer.step()
    after = dict(model.named_parameters())
    frozen = [i for i in range(model.vocab_size) if i not in new]
    assert model.lm_head.weight is model.token_embed.weight
    assert torch.equal(after["token_embed.weight"][frozen], before["token_embed.weight"][frozen])
    assert not torch.equal(after["token_embed.weight"][new], before["token_embed.weight"][new])
    assert all(torch.equal(p, before[n]) for n, p in after.items() if ".text." in n)
    assert any(not torch.equal(p, before[n]) for n, p in after.items() if ".image." in n)
