import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~10 s on 2 CPU cores (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped without one (benchmarks/gpu_check.sh runs them)")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Models trained on first use (the digit judge) go to a folder of this test session."""
    os.environ["TRANSFUSION_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def debug_run(tmp_path_factory):
    """One briefly trained `debug` run folder, shared by every test that only reads it."""
    from transfusion.cli import COMMANDS

    out = tmp_path_factory.mktemp("shared") / "debug"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), "train.steps=2", "train.eval_samples=2",
                       "sampling.steps=2"])
    return out


@pytest.fixture(scope="session")
def fine_tune(tmp_path_factory):
    """``fine_tune(name, start, *overrides)``: ``start`` (a run folder) fine-tuned for two steps with
    ``overrides`` (``train.init_from``), in a new folder."""
    from transfusion.cli import COMMANDS

    def run(name: str, start, *overrides):
        out = tmp_path_factory.mktemp(name) / "run"
        COMMANDS["train"](["--preset", "debug", "--out", str(out), f"train.init_from={start}", "train.steps=2",
                           "train.eval_samples=2", "sampling.steps=2", *overrides])
        return out

    return run


def pretrained_folder(root, tie: bool):
    """A tiny random transformers Llama (GQA; tied embeddings or not) saved with a 320-token BPE
    tokenizer.json, as a pretrained model folder is laid out: (hf model, tokenizer, folder)."""
    transformers = pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    from transfusion.data.text import EnglishText

    hf_tok = HFTokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = EnglishText("train")
    hf_tok.train_from_iterator((text[i].caption for i in range(300)), trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    assert hf_tok.get_vocab_size() == 320  # the byte-level alphabet (256) and some merges
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      rms_norm_eps=1e-6, tie_word_embeddings=tie, rope_theta=5e4)
    hf = transformers.LlamaForCausalLM(config).eval()
    folder = root / "llama"
    hf.save_pretrained(folder)
    hf_tok.save(str(folder / "tokenizer.json"))
    return hf, hf_tok, folder


@pytest.fixture(scope="session")
def pretrained_lm(tmp_path_factory):
    """A tiny pretrained-model folder with tied embeddings (as SmolLM has)."""
    return pretrained_folder(tmp_path_factory.mktemp("tied"), tie=True)


@pytest.fixture(scope="session")
def pretrained_lm_untied(tmp_path_factory):
    return pretrained_folder(tmp_path_factory.mktemp("untied"), tie=False)
