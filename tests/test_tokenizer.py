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
