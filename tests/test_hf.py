"""Pretrained causal LMs in Hugging Face folders: tiny random Llama, Qwen2 and Qwen3 models saved
by ``transformers`` load into this library's trunk and give the same logits."""

import pytest
import torch

from transfusion.config import load_config
from transfusion.hf import load_text_weights, model_fields
from transfusion.model.transfusion import Transfusion

transformers = pytest.importorskip("transformers")

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128, rms_norm_eps=1e-6)
FAMILIES = {
    "llama-gqa-tied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True,
                                                                 rope_theta=5e4)),
    "qwen2-bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen3-qknorm": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=1, head_dim=16,
                                                              tie_word_embeddings=False)),
}


def saved(tmp_path, family, vocab=VOCAB):
    config_class, model_class, extra = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**{**COMMON, "vocab_size": vocab}, **extra)
    hf = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():  # random biases and norms, so that a wrong mapping shows
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path / family)
    return hf, tmp_path / family


def ours(folder, *overrides, extra_vocab=0, vocab=VOCAB):
    fields = model_fields(folder)
    cfg = load_config("debug", overrides=[f"model.{k}={str(v).lower() if isinstance(v, bool) else v}"
                                          for k, v in fields.items()] + list(overrides))
    model = Transfusion(cfg.model, cfg.image, vocab + extra_vocab, 3, seed=0).eval()
    load_text_weights(model, folder)
    return model


def logits_of(model, ids):
    L = ids.shape[1]
    with torch.no_grad():
        hidden, _ = model(ids, torch.arange(L)[None], torch.zeros(1, L, dtype=torch.long), torch.full((1, L), -1))
        return model.logits(hidden)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_transformers_model_gives_the_same_logits_here(tmp_path, family):
    hf, folder = saved(tmp_path, family)
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits[0]
    got = logits_of(ours(folder), ids)
    assert (got - expected).abs().max() <= 1e-4, (got - expected).abs().max()
    grown = ours(folder, extra_vocab=5)  # tokens added (BOI, EOI, ...): text without them is unchanged
    got = logits_of(grown, ids)
    assert (got[:, :VOCAB] - expected).abs().max() <= 1e-4
    assert torch.allclose(grown.token_embed.weight[VOCAB:], grown.token_embed.weight[:VOCAB].mean(0).expand(5, -1))


def test_mot_copies_both_start_from_the_pretrained_trunk(tmp_path):
    hf, folder = saved(tmp_path, "qwen2-bias")
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(ids).logits[0]
    mot = ours(folder, "model.mot=true")
    assert (logits_of(mot, ids) - expected).abs().max() <= 1e-4
    params = dict(mot.named_parameters())
    assert all(torch.equal(p, params[n.replace(".image.", ".text.")]) for n, p in params.items() if ".image." in n)


def test_unsupported_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_fields(tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*not supported"):
        model_fields(tmp_path)


def test_a_tied_model_checkpoints_and_reloads(tmp_path):
    from transfusion.autoencoders import IdentityAutoencoder
    from transfusion.checkpoint import load_checkpoint, save_checkpoint
    from transfusion.tokenizer import ByteTokenizer

    from transfusion.distributed import World, build_model

    cfg = load_config("debug", overrides=["model.tie_embeddings=true", "model.n_kv_heads=1"])
    tok = ByteTokenizer()
    model = Transfusion(cfg.model, cfg.image, tok.vocab_size, 3, seed=0)
    assert model.lm_head.weight is model.token_embed.weight
    _, core = build_model(cfg, tok, IdentityAutoencoder(), World(), torch.device("cpu"))  # meta, then to_empty
    assert core.lm_head.weight is core.token_embed.weight  # the training model stays tied
    save_checkpoint(tmp_path / "c", 1, model, cfg, tok, IdentityAutoencoder())
    loaded = load_checkpoint(tmp_path / "c").model
    assert loaded.lm_head.weight is loaded.token_embed.weight
    assert torch.equal(loaded.token_embed.weight, model.token_embed.weight)


@pytest.fixture
def pretrained(pretrained_lm):
    return pretrained_lm


def test_a_run_starts_from_a_pretrained_folder_with_its_tokenizer(tmp_path, pretrained):
    """`transfusion train ... model.init_from=FOLDER`: the folder's architecture, tokenizer (plus
    BOS/EOS/BOI/EOI/PAD) and weights; its text logits are unchanged at step 0."""
    import json

    from transfusion.checkpoint import load_checkpoint
    from transfusion.cli import COMMANDS

    hf, hf_tok, folder = pretrained
    vocab = 320
    out = tmp_path / "run"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), f"model.init_from={folder}", "train.steps=1",
                       "optim.lr=1e-12", "optim.min_lr=0", "train.eval_samples=2", "diffusion.sample_steps=2"])
    saved_cfg = load_checkpoint(out).config.model
    assert (saved_cfg.dim, saved_cfg.n_kv_heads, saved_cfg.tie_embeddings) == (64, 2, True)
    loaded = load_checkpoint(out)
    assert loaded.tokenizer.vocab_size == vocab + 5 and loaded.tokenizer.boi_id >= vocab
    ids = torch.tensor([hf_tok.encode("the value of a list").ids])
    with torch.no_grad():
        expected = hf(ids).logits[0]
    got = logits_of(loaded.model, ids)[:, :vocab]
    assert (got - expected).abs().max() < 1e-3  # one step at lr 1e-12
    assert json.loads((out / "report.json").read_text())["active_parameters"] > 0


@pytest.mark.parametrize("family", ["qwen2-bias", "qwen3-qknorm"])
def test_export_then_transformers_load_gives_the_same_logits(tmp_path, family):
    from transfusion.hf import export_text_model
    from transfusion.tokenizer import ByteTokenizer

    _, folder = saved(tmp_path, family)
    model = ours(folder, "model.mot=true")
    with torch.no_grad():  # train-like drift, so the export is not just the import read back
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    out = export_text_model(model, ByteTokenizer(), tmp_path / "exported")
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = back(ids).logits[0]
    assert (logits_of(model, ids) - expected).abs().max() <= 1e-4


def test_export_hf_command_writes_a_llama_folder(debug_run, tmp_path):
    from transfusion.cli import main as cli

    cli(["export-hf", str(debug_run), str(tmp_path / "llama")])
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "llama").eval()
    from transfusion.checkpoint import load_checkpoint

    loaded = load_checkpoint(debug_run)
    ids = torch.tensor([[loaded.tokenizer.bos_id, *loaded.tokenizer.encode("a red circle")]])
    with torch.no_grad():
        expected = back(ids).logits[0]
    assert type(back).__name__ == "LlamaForCausalLM"
    assert (logits_of(loaded.model, ids)[:, : loaded.model.vocab_size] - expected).abs().max() <= 1e-4


def test_lmfusion_keeps_the_text_weights_and_text_logits_bit_equal(tmp_path, pretrained):
    """model.freeze_text with MoT: image training leaves every text weight, and so the logits of
    text-only input, exactly as loaded; the image copies start as copies and move."""
    from transfusion.checkpoint import load_checkpoint
    from transfusion.cli import COMMANDS

    hf, hf_tok, folder = pretrained
    out = tmp_path / "lmfusion"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), f"model.init_from={folder}", "model.mot=true",
                       "model.freeze_text=true", "train.steps=3", "optim.lr=1e-2", "optim.warmup_steps=1",
                       "train.eval_samples=2", "diffusion.sample_steps=2"])
    trained = load_checkpoint(out).model
    start = ours(folder, "model.mot=true", extra_vocab=5, vocab=320)
    a, b = trained.state_dict(), start.state_dict()
    text = [k for k in a if ".image." not in k and k.startswith(("trunk.", "token_embed", "lm_head"))]
    assert text and all(torch.equal(a[k], b[k]) for k in text)
    assert any(not torch.equal(a[k], b[k]) for k in a if ".image." in k)  # the image copies trained
    ids = torch.tensor([hf_tok.encode("the value of a list").ids])
    assert torch.equal(logits_of(trained, ids), logits_of(start, ids))
    with pytest.raises(ValueError, match="freeze_text=true needs model.mot=true and model.init_from"):
        load_config("debug", overrides=["model.freeze_text=true"])
