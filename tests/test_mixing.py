"""``data.mix_by``: the data fractions as shares of documents or of tokens (the paper mixes text
and image-caption data 1:1 by tokens)."""

import pytest

from transfusion.autoencoders import IdentityAutoencoder
from transfusion.components import build_components
from transfusion.config import load_config
from transfusion.tokenizer import ByteTokenizer


def text_share(patch_size: int, mix_by: str, steps: int = 12) -> float:
    """Share of a batch's positions that belong to text-only documents, over ``steps`` batches
    of the debug run with text_fraction 0.5 and images of 16 px cut into ``patch_size`` patches."""
    cfg = load_config("debug", overrides=["data.text_fraction=0.5", "data.interleaved_fraction=0", "image.adapter=linear",
                                          f"image.patch_size={patch_size}", f"data.mix_by={mix_by}",
                                          "data.seq_len=256", "model.max_seq_len=256"])
    builder = build_components(cfg, tokenizer=ByteTokenizer(), autoencoder=IdentityAutoencoder()).batches
    text = total = 0
    for step in range(steps):
        b = builder.batch_at(step, 0)
        is_image = b.image_ids >= 0
        text_docs = set(b.doc_ids[b.doc_ids >= 0].tolist()) - set(b.doc_ids[is_image].tolist())
        in_text = sum(int((b.doc_ids == d).sum()) for d in text_docs)  # counted apart from the builder's own rule
        assert in_text == b.text_document_positions()
        text, total = text + in_text, total + b.num_tokens
    return text / total


def test_by_tokens_the_text_share_is_the_fraction_whatever_an_image_costs():
    long_images, short_images = text_share(2, "tokens"), text_share(4, "tokens")  # 64 and 16 positions per image
    assert abs(long_images - 0.5) < 0.05 and abs(short_images - 0.5) < 0.05
    assert abs(long_images / short_images - 1) < 0.05  # the same text per token, so per FLOP, in both arms


def test_by_documents_an_arm_with_longer_images_sees_less_text():
    long_images, short_images = text_share(2, "documents"), text_share(4, "documents")
    assert long_images < 0.9 * short_images


def test_mix_by_is_checked():
    with pytest.raises(ValueError, match="data.mix_by"):
        load_config("debug", overrides=["data.mix_by=bytes"])
