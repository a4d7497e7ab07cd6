"""Pretrained causal LMs in Hugging Face folders: tiny random Llama, Qwen2 and Qwen3 models saved
by ``transformers`` load into this library's trunk and give the same logits."""

import pytest
import torch

from transfusion.config import Config, fields_of, load_config
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
    assert "rope_scaling" in fields and set(fields) <= set(fields_of(Config(), "architecture", lm=True)["model"])
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
    import json

    from safetensors.torch import load_file, save_file

    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_fields(tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*not supported"):
        model_fields(tmp_path)
    _, folder = saved(tmp_path, "llama-gqa-tied")
    config = json.loads((folder / "config.json").read_text())
    for rope, error in (({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "'yarn'.*not supported"),
                        ({**LLAMA3_ROPE, "rope_theta": 5e5}, None)):  # transformers 5's rope_parameters
        (folder / "config.json").write_text(json.dumps({**config, "rope_parameters": rope}))
        if error:
            with pytest.raises(ValueError, match=error):
                model_fields(folder)
        else:
            fields = model_fields(folder)
            assert (fields["rope_scaling"], fields["rope_factor"], fields["rope_theta"]) == ("llama3", 32.0, 5e5)
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    extra = {"model.layers.1.self_attn.o_proj.bias": torch.zeros(64), "model.layers.0.mlp.extra.weight": torch.ones(2),
             "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}  # the last one: an old buffer, ignored
    save_file({**weights, **extra}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="no place for: layers.0.mlp.extra.weight, layers.1.self_attn.o_proj.bias$"):
        ours(folder)
    save_file({**weights, "lm_head.weight": weights["model.embed_tokens.weight"] + 1}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="lm_head.weight differs from the embedding"):
        ours(folder)


def test_a_tied_model_checkpoints_and_reloads(tmp_path):
    from transfusion.autoencoders import IdentityAutoencoder
    from transfusion.checkpoint import load_checkpoint
    from transfusion.train_state import save_checkpoint
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
                       "optim.lr=1e-12", "optim.min_lr=0", "train.eval_samples=2", "sampling.steps=2"])
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


def test_a_run_reads_its_pretrained_folder_at_its_first_start_only(tmp_path, pretrained):
    """A run is self-contained: after the pretrained folder is deleted the run resumes, and a run
    fine-tuned from it (train.init_from) starts; both configs still name the folder, for the record."""
    import shutil

    from transfusion.checkpoint import load_checkpoint
    from transfusion.cli import COMMANDS

    folder = shutil.copytree(pretrained[2], tmp_path / "lm")
    run, tuned = tmp_path / "run", tmp_path / "tuned"
    quick = ["train.eval_samples=2", "sampling.steps=2", "optim.warmup_steps=1"]
    start = ["--preset", "debug", "--out", str(run), f"model.init_from={folder}", *quick]
    COMMANDS["train"]([*start, "train.steps=1"])
    first = load_checkpoint(run)
    shutil.rmtree(folder)
    COMMANDS["train"]([*start, "train.steps=2"])  # the same command, resumed
    resumed = load_checkpoint(run)
    assert resumed.step == 2 and resumed.config.model == first.config.model
    assert resumed.config.model.init_from == str(folder) and resumed.tokenizer.to_json() == first.tokenizer.to_json()
    COMMANDS["train"](["--preset", "debug", "--out", str(tuned), f"train.init_from={run}", "train.steps=1", *quick])
    fine_tuned = load_checkpoint(tuned)
    assert fine_tuned.config.model == first.config.model
    assert fine_tuned.tokenizer.to_json() == first.tokenizer.to_json()


@pytest.mark.parametrize("family", ["qwen2-bias", "qwen3-qknorm"])
def test_export_then_transformers_load_gives_the_same_logits(tmp_path, family):
    from transfusion.hf import export_text_model
    from transfusion.tokenizer import ByteTokenizer

    _, folder = saved(tmp_path, family)
    model = ours(folder, "model.mot=true", extra_vocab=ByteTokenizer().vocab_size - VOCAB)
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
    # the byte tokenizer as a tokenizer.json: AutoTokenizer reads it, and the folder starts a run again
    from transfusion.hf import model_fields, pretrained_tokenizer

    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "llama")
    text = "héllo <bos>, a red circle\n\t✓"
    assert auto(text).input_ids == loaded.tokenizer.encode(text) and auto.decode(auto(text).input_ids) == text
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (256, 257, 260)
    assert auto.convert_tokens_to_ids(["<boi>", "<eoi>"]) == [258, 259]
    tok = pretrained_tokenizer(tmp_path / "llama")
    assert (tok.vocab_size, sorted(tok.special_ids), tok.new_ids) == (261, list(range(256, 261)), ())
    assert tok.encode("a red circle") == loaded.tokenizer.encode("a red circle")
    fields = model_fields(tmp_path / "llama")
    again = ours(tmp_path / "llama", vocab=261)
    assert fields["dim"] == loaded.config.model.dim and torch.equal(logits_of(again, ids), logits_of(loaded.model, ids))


def test_lmfusion_keeps_the_text_weights_and_text_logits_bit_equal(tmp_path, pretrained):
    """model.freeze_text with MoT: image training leaves every pretrained text weight, and so the
    logits of text-only input, exactly as loaded (weight decay included); the image copies and the
    new rows (BOI, EOI, ...) train, and BOI grows likelier where a caption ends and its image follows."""
    from transfusion.checkpoint import load_checkpoint
    from transfusion.cli import COMMANDS

    hf, hf_tok, folder = pretrained
    out = tmp_path / "lmfusion"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), f"model.init_from={folder}", "model.mot=true",
                       "model.freeze_text=true", "train.steps=3", "optim.lr=1e-2", "optim.warmup_steps=1",
                       "optim.weight_decay=0.5", "train.eval_samples=2", "sampling.steps=2"])
    loaded = load_checkpoint(out)
    trained, tok = loaded.model, loaded.tokenizer
    start = ours(folder, "model.mot=true", extra_vocab=5, vocab=320)
    assert sorted(tok.new_ids) == list(range(320, 325))  # its tokenizer has no special tokens: all five added
    a, b = trained.state_dict(), start.state_dict()
    text = [k for k in a if ".image." not in k and k.startswith("trunk.")]
    assert text and all(torch.equal(a[k], b[k]) for k in text)
    assert any(not torch.equal(a[k], b[k]) for k in a if ".image." in k)  # the image copies trained
    embed, embed0 = a["token_embed.weight"], b["token_embed.weight"]
    assert torch.equal(embed[:320], embed0[:320])  # the pretrained rows, bit-equal
    assert all(not torch.equal(embed[i], embed0[i]) for i in (tok.boi_id, tok.eoi_id))  # the new rows trained
    ids = torch.tensor([hf_tok.encode("the value of a list").ids])
    assert torch.equal(logits_of(trained, ids)[:, :320], logits_of(start, ids)[:, :320])
    captions = [[tok.bos_id, *tok.encode(c)] for c in ("a small red circle at the top", "a large blue square")]
    rise = [torch.log_softmax(logits_of(m, torch.tensor([c]))[-1], -1)[tok.boi_id] for c in captions
            for m in (trained, start)]
    assert all(after > before for after, before in zip(rise[::2], rise[1::2])), rise
    with pytest.raises(ValueError, match="freeze_text=true needs model.mot=true and model.init_from"):
        load_config("debug", overrides=["model.freeze_text=true"])


# config.json values of the public checkpoints (the layer count cut to 1 below). Their tokenizers are replaced
# by a small BPE laid out like theirs: where the special tokens sit, how far the embedding is padded past it.
LLAMA3_ROPE = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_type": "llama3"}
REAL = {
    "SmolLM2-135M": ({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
                      "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
                      "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True,
                      "max_position_embeddings": 8192, "hidden_act": "silu", "vocab_size": 49152},
                     # specials first (<|endoftext|> is 0 = BOS = EOS), the vocabulary exactly full
                     dict(first=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], last=[], spare=0,
                          ids={"bos": "<|endoftext|>", "eos": "<|endoftext|>"},
                          names={"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})),
    "Qwen2.5-0.5B": ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
                      "intermediate_size": 4864, "num_attention_heads": 14, "num_key_value_heads": 2,
                      "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
                      "max_position_embeddings": 32768, "use_sliding_window": False, "sliding_window": 32768,
                      "max_window_layers": 24, "hidden_act": "silu", "vocab_size": 151936},
                     # 151,665 tokens in 151,936 rows: 271 spare rows; PAD is <|endoftext|> by tokenizer_config
                     dict(first=[], last=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], spare=271,
                          ids={"bos": "<|endoftext|>", "eos": "<|endoftext|>"},
                          names={"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})),
    "Qwen3-0.6B": ({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024,
                    "intermediate_size": 3072, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
                    "attention_bias": False, "max_position_embeddings": 40960, "use_sliding_window": False,
                    "hidden_act": "silu", "vocab_size": 151936},
                   dict(first=[], last=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                        spare=267, ids={"bos": "<|endoftext|>", "eos": "<|im_end|>"},
                        names={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})),
    "Llama-3.2-1B": ({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
                      "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                      "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": LLAMA3_ROPE,
                      "tie_word_embeddings": True, "max_position_embeddings": 131072, "attention_bias": False,
                      "mlp_bias": False, "hidden_act": "silu", "vocab_size": 128256},
                     # 128,000 BPE tokens then 256 specials (<|begin_of_text|> first): exactly full, no PAD
                     dict(first=[], last=["<|begin_of_text|>", "<|end_of_text|>"]
                          + [f"<|reserved_special_token_{i}|>" for i in range(14)], spare=0,
                          ids={"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>"},
                          names={"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})),
}


def real_folder(root, name):
    """A folder laid out as the checkpoint ``name`` on the Hub (its config.json as written there, one
    layer, random weights, a small BPE in its tokenizer's layout): (transformers model, folder, text ids)."""
    import json

    from tokenizers import AddedToken, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    from transfusion.data.text import EnglishText

    config, layout = REAL[name]
    config = json.loads(json.dumps(config))  # a copy: transformers writes into the rope dict it is given
    text = EnglishText("train")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator((text[i].caption for i in range(300)), trainers.BpeTrainer(
        vocab_size=300 + len(layout["first"]), special_tokens=layout["first"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens([AddedToken(t, special=True) for t in layout["last"]])
    folder = root / name
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    rows = tok.get_vocab_size() + layout["spare"]
    config = {**config, "num_hidden_layers": 1, "vocab_size": rows, "torch_dtype": "float32",
              **{f"{role}_token_id": tok.token_to_id(t) for role, t in layout["ids"].items()}}
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                              **layout["names"]}))
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))
    with torch.no_grad():  # random norms and biases, so that a wrong mapping shows
        for n, p in hf.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config))  # the Hub's own layout (transformers 4 keys)
    ids = []
    for i in range(300):  # a text long enough that rope scaling matters
        ids += tok.encode(text[i].caption).ids
        if len(ids) >= 640:
            break
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval(), folder, torch.tensor([ids[:640]])


def pretrained_model(folder, *overrides):
    from transfusion.autoencoders import IdentityAutoencoder
    from transfusion.hf import pretrained_tokenizer, with_pretrained_fields

    cfg = with_pretrained_fields(load_config("debug", overrides=[f"model.init_from={folder}", "model.max_seq_len=1024",
                                                                 *overrides]))
    tok = pretrained_tokenizer(folder)
    model = Transfusion.build(cfg.model, cfg.image, tok, IdentityAutoencoder()).eval()
    load_text_weights(model, folder, tok.new_ids)
    return model, tok


@pytest.mark.parametrize("name", REAL)
def test_real_checkpoint_layouts_load_exactly_and_export_back(tmp_path, name):
    """Folders shaped as SmolLM2-135M, Qwen2.5-0.5B (embedding padded past the tokenizer), Qwen3-0.6B
    (head_dim 128 over hidden 1024) and Llama-3.2-1B (llama3 rope scaling): transformers' logits over
    640 positions; their own BOS / EOS / PAD; then export-hf gives the same logits and tokenizer back."""
    import json

    from transfusion.hf import export_text_model, model_fields, pretrained_tokenizer

    hf, folder, ids = real_folder(tmp_path, name)
    config, layout = REAL[name]
    rows = hf.config.vocab_size
    with torch.no_grad():
        expected = hf(ids).logits[0]
    model, tok = pretrained_model(folder)
    assert (tok.bos_id, tok.eos_id) == (hf.config.bos_token_id, hf.config.eos_token_id)
    pad = layout["names"].get("pad_token")
    assert tok.pad_id == (tok.hf.token_to_id(pad) if pad else max(tok.new_ids))  # its own, or added
    assert model.vocab_size == max(rows, tok.hf.get_vocab_size()) and model.vocab_size - rows <= 3
    kept = [i for i in range(rows) if i not in tok.new_ids]  # every row but BOI, EOI (and an added PAD)
    got = logits_of(model, ids)
    assert (got[:, kept] - expected[:, kept]).abs().max() <= 1e-4

    out = export_text_model(model, tok, tmp_path / "export")
    written = json.loads((out / "config.json").read_text())
    assert written["head_dim"] == config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])
    assert written.get("rope_scaling") == config.get("rope_scaling")
    assert [written[f"{r}_token_id"] for r in ("bos", "eos", "pad")] == [tok.bos_id, tok.eos_id, tok.pad_id]
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert (back(ids).logits[0] - got).abs().max() <= 1e-4
    auto = transformers.AutoTokenizer.from_pretrained(out)
    text = "Return the string left justified <boi> in a string"
    assert auto(text).input_ids == tok.encode(text)
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    again, again_tok = pretrained_model(out)  # model.init_from=<export>: nothing added a second time
    assert model_fields(out) == model_fields(folder) and again_tok.vocab_size == tok.vocab_size
    assert not again_tok.new_ids and pretrained_tokenizer(out).special_ids == tok.special_ids
    assert torch.equal(logits_of(again, ids), got)
