import pytest

from transfusion.tokenizer import (
    CONTROL_TOKENS,
    BPETokenizer,
    ByteTokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_json,
)

TEXT = ["a large red circle on the left", "two small green triangles", "the quick brown fox"] * 50


def test_byte_tokenizer_round_trip_and_specials():
    tok = ByteTokenizer()
    ids = tok.encode("héllo, world")
    assert max(ids) < 256 and tok.decode(ids) == "héllo, world"
    assert len(tok.special_ids) == len(CONTROL_TOKENS) and min(tok.special_ids) >= 256
    assert tok.decode(ids + [tok.eos_id, tok.boi_id]) == "héllo, world"  # specials are dropped
    assert isinstance(tokenizer_from_json(tok.to_json()), ByteTokenizer)


def test_bpe_trains_shortens_captions_and_round_trips(tmp_path):
    tok = BPETokenizer.train(TEXT, vocab_size=400)
    caption = "a large red circle on the left"
    ids = tok.encode(caption)
    assert tok.decode(ids) == caption
    assert len(ids) == len(caption.split())  # whole words become single tokens
    assert {tok.bos_id, tok.eos_id, tok.boi_id, tok.eoi_id, tok.pad_id} == set(range(5))
    assert not set(ids) & tok.special_ids
    path = tmp_path / "tokenizer.json"
    save_tokenizer(tok, path)
    again = load_tokenizer(path)
    assert again.encode(caption) == ids and again.vocab_size == tok.vocab_size


def test_missing_tokenizer_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "none.json")


def test_tokenizer_cli_writes_a_file(tmp_path):
    from transfusion.cli import main

    out = tmp_path / "tok.json"
    main(["tokenizer", "train", "--data", "shapes", "--vocab-size", "300", "--samples", "500", "--out", str(out)])
    tok = load_tokenizer(out)
    assert tok.decode(tok.encode("a small blue square at the top")) == "a small blue square at the top"


def test_the_byte_tokenizer_as_a_tokenizers_file_gives_the_same_ids_and_bytes():
    tok = ByteTokenizer()
    hf = tok.to_hf()
    text = "héllo, world\n\t  ✓ \x00\x7f~ÿ"
    assert hf.encode(text).ids == tok.encode(text) and hf.decode(tok.encode(text)) == text
    assert [hf.token_to_id(t) for t in CONTROL_TOKENS] == [tok.bos_id, tok.eos_id, tok.boi_id, tok.eoi_id, tok.pad_id]
    assert hf.get_vocab_size() == tok.vocab_size


def test_a_pretrained_tokenizer_keeps_its_own_specials_and_padded_vocabulary_through_json():
    """A pretrained model's BOS / EOS / PAD are its own tokens; only the missing roles are added, after its
    last token (here in the spare rows of an embedding padded to 400); the JSON keeps all of it."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    base = HFTokenizer(models.BPE())  # stands for a pretrained tokenizer
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    base.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    end = base.token_to_id("<|endoftext|>")
    n = base.get_vocab_size()
    tok = BPETokenizer.extended(base, {"bos": "<|endoftext|>", "eos": "<|endoftext|>"}, vocab_size=400)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (end, end, 400)
    assert tok.new_ids == (n, n + 1, n + 2) and (tok.boi_id, tok.eoi_id, tok.pad_id) == tok.new_ids
    again = tokenizer_from_json(tok.to_json())
    assert (again.vocab_size, again.new_ids, again.special_ids) == (400, tok.new_ids, tok.special_ids)
    assert again.encode("two small green triangles") == tok.encode("two small green triangles")
    own = BPETokenizer.train(TEXT, vocab_size=300)
    assert own.to_json() == own.hf.to_str() and own.new_ids == ()  # a tokenizer trained here: the plain file


def test_control_tokens_typed_in_text_stay_text():
    from transfusion.tokenizer import BPETokenizer, ByteTokenizer, tokenizer_from_json

    trained = BPETokenizer.train(["a red circle and a blue square"] * 50, 300)
    for tok in (trained, tokenizer_from_json(trained.to_json()), ByteTokenizer()):
        text = "a red <boi> circle<eoi> <eos><bos><pad>"
        ids = tok.encode(text)
        assert not set(ids) & tok.special_ids
        assert tok.decode(ids) == text
