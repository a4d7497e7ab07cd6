"""The attention mask, what each position can see, and the two attention paths."""

import random

import pytest
import torch

from transfusion.batch import IGNORE
from transfusion.config import load_config
from transfusion.data.document import Document, Image, Text
from transfusion.data.packing import PATCH, Layout, arrange, layout, pack
from transfusion.model.attention import ChunkedMask, transfusion_mask
from transfusion.model.transfusion import Transfusion
from transfusion.tokenizer import ByteTokenizer

PICTURE = """
x . . . . . . . . .
x x . . . . . . . .
x x x . . . . . . .
x x x x x x . . . .
x x x x x x . . . .
x x x x x x . . . .
x x x x x x x . . .
x x x x x x x x . .
. . . . . . . . x .
. . . . . . . . x x
"""


def picture_to_bool(text: str) -> torch.Tensor:
    return torch.tensor([[c == "x" for c in line.split()] for line in text.strip().splitlines()])


def test_mask_equals_docstring_picture():
    # row: t t B p p p E t | t t  (the docstring's example)
    doc_ids = torch.tensor([[0] * 8 + [1] * 2])
    image_ids = torch.tensor([[-1, -1, -1, 0, 0, 0, -1, -1, -1, -1]])
    mask = transfusion_mask(doc_ids, image_ids)[0]
    assert torch.equal(mask, picture_to_bool(PICTURE))
    doc = transfusion_mask.__doc__
    assert "p        x x x x x x . . | . ." in doc  # the picture in the docstring is this one


def test_mask_two_images_two_documents():
    # doc 0: t B p p E B p p E ; doc 1: t t ; padding
    doc_ids = torch.tensor([[0] * 9 + [1, 1] + [-1]])
    image_ids = torch.tensor([[-1, -1, 0, 0, -1, -1, 1, 1, -1, -1, -1, -1]])
    mask = transfusion_mask(doc_ids, image_ids)[0]
    assert mask[2, 3] and mask[3, 2]  # patches of image 0 see each other
    assert not mask[3, 6] and mask[6, 3]  # image 0 does not see image 1; image 1 sees image 0
    assert mask[6, 7] and mask[7, 6]
    assert not mask[9, 8] and not mask[8, 9]  # no attention across documents
    assert mask[11, 11]  # padding attends to itself: no empty rows


def make_model(adapter="linear", attention="sdpa", patch_size=2, seed=0):
    cfg = load_config("debug", overrides=[f"image.adapter={adapter}", f"model.attention={attention}",
                                          f"image.patch_size={patch_size}"])
    torch.manual_seed(seed)
    return Transfusion(cfg.model, cfg.image, ByteTokenizer().vocab_size, 3, seed=cfg.train.seed).eval(), cfg


def two_document_batch(model, tok, images):
    docs = [
        [Text("ab"), Image(images[0]), Text("cd"), Image(images[1]), Text("ef")],
        [Text("xyz")],
    ]
    lays = [layout(segs, [s.pixels for s in segs if isinstance(s, Image)], [1000] * 2, tok, model.num_patches)
            for segs in docs]
    batch, n = pack(lays, rows=1, seq_len=200, pad_id=tok.pad_id)
    assert n == 2
    return batch


def run(model, batch, t=None):
    t = torch.full((len(batch.latents),), 500) if t is None else t
    groups = [batch.image_group(ids, torch.stack([batch.latents[i] for i in ids]), t[ids]) for ids in batch.shape_groups()]
    hidden, noise = model(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, groups)
    return hidden[0], noise


@pytest.mark.parametrize("adapter", ["linear", "unet"])
def test_positions_see_only_what_the_mask_allows(adapter):
    tok = ByteTokenizer()
    model, _ = make_model(adapter, patch_size=1 if adapter == "unet" else 2)
    torch.manual_seed(1)
    images = [torch.rand(3, 16, 16) * 2 - 1 for _ in range(2)]
    batch = two_document_batch(model, tok, images)
    base, _ = run(model, batch)
    patch0 = (batch.image_ids[0] == 0).nonzero()[:, 0]
    patch1 = (batch.image_ids[0] == 1).nonzero()[:, 0]
    doc1 = (batch.doc_ids[0] == 1).nonzero()[:, 0]
    text_before_img1 = int(patch1[0]) - 2  # the 'd' before image 1's BOI

    # change image 1: positions before it and the other document must not move
    changed = two_document_batch(model, tok, [images[0], torch.rand(3, 16, 16) * 2 - 1])
    out, _ = run(model, changed)
    assert torch.allclose(out[: int(patch1[0])], base[: int(patch1[0])], atol=1e-5)
    assert torch.allclose(out[doc1], base[doc1], atol=1e-5)
    assert not torch.allclose(out[patch1], base[patch1], atol=1e-4)  # its own patches change
    assert not torch.allclose(out[int(patch1[-1]) + 1], base[int(patch1[-1]) + 1], atol=1e-4)  # EOI after it

    # change one patch of image 0: every patch of image 0 changes (bidirectional), earlier text does not
    img = images[0].clone()
    img[:, -2:, -2:] = -img[:, -2:, -2:]  # the last patch in raster order
    changed = two_document_batch(model, tok, [img, images[1]])
    out, _ = run(model, changed)
    assert not torch.allclose(out[patch0[0]], base[patch0[0]], atol=1e-4)
    assert torch.allclose(out[: int(patch0[0])], base[: int(patch0[0])], atol=1e-5)
    assert torch.allclose(out[doc1], base[doc1], atol=1e-5)

    # change later text: nothing before it moves
    tokens = batch.tokens.clone()
    tokens[0, text_before_img1 + 5 :] = tok.encode("q")[0]
    batch2 = type(batch)(**{**batch.__dict__, "tokens": tokens})
    out, _ = run(model, batch2)
    assert torch.allclose(out[: text_before_img1 + 5], base[: text_before_img1 + 5], atol=1e-5)


def test_lm_targets_follow_the_spec():
    tok = ByteTokenizer()
    model, cfg = make_model()
    img = torch.zeros(3, 16, 16)
    lay = layout([Text("ab"), Image(img), Text("c")], [img], [1000], tok, model.num_patches)
    batch, _ = pack([lay], rows=1, seq_len=len(lay.ids), pad_id=tok.pad_id)
    ids = lay.ids
    targets = batch.targets[0].tolist()
    for i, inp in enumerate(ids):
        if inp == tok.boi_id or inp == PATCH:
            assert targets[i] == IGNORE, f"position {i} (input {inp}) must carry no LM loss"
    boi_pos = ids.index(tok.boi_id)
    assert targets[boi_pos - 1] == tok.boi_id  # BOI is a target
    eoi_pos = ids.index(tok.eoi_id)
    assert targets[eoi_pos] == ord("c")  # text after an image is learned
    assert targets[-1] == IGNORE  # EOS predicts nothing across the boundary


def test_arrange_flips_and_caps_noise():
    cfg = load_config("debug").diffusion
    doc = Document.pair("a red circle", torch.zeros(3, 16, 16))
    rng = random.Random(0)
    seen = {"caption_first": 0, "image_first": 0, "dropped": 0}
    for _ in range(4000):
        segs, caps = arrange(doc, rng, cfg)
        if len(segs) == 1:
            seen["dropped"] += 1
            assert caps == [cfg.timesteps]
        elif isinstance(segs[0], Image):
            seen["image_first"] += 1
            assert caps == [cfg.image_first_max_t]
        else:
            seen["caption_first"] += 1
            assert caps == [cfg.timesteps]
    assert abs(seen["dropped"] / 4000 - 0.1) < 0.02
    assert abs(seen["image_first"] / 4000 - 0.9 * 0.2) < 0.025


def test_images_of_different_sizes_in_one_batch():
    tok = ByteTokenizer()
    model, _ = make_model()
    small, big = torch.zeros(3, 8, 8), torch.zeros(3, 16, 24)
    lays = [layout([Text("a"), Image(x)], [x], [1000], tok, model.num_patches) for x in (small, big)]
    batch, n = pack(lays, rows=2, seq_len=128, pad_id=tok.pad_id)
    assert n == 2 and len(batch.shape_groups()) == 2
    _, noise = run(model, batch)
    assert sorted(tuple(x.shape[1:]) for x in noise) == [(3, 8, 8), (3, 16, 24)]


def test_flex_forward_matches_sdpa():
    tok = ByteTokenizer()
    sdpa, _ = make_model(attention="sdpa")
    flex, _ = make_model(attention="flex")
    flex.load_state_dict(sdpa.state_dict())
    images = [torch.rand(3, 16, 16) * 2 - 1 for _ in range(2)]
    batch = two_document_batch(sdpa, tok, images)
    with torch.no_grad():  # FlexAttention has no backward on CPU; the forward is what is compared
        out_flex, noise_flex = run(flex, batch)
        out_sdpa, noise_sdpa = run(sdpa, batch)
    assert torch.allclose(out_flex, out_sdpa, atol=1e-4)
    assert torch.allclose(noise_flex[0], noise_sdpa[0], atol=1e-4)


@pytest.mark.parametrize("chunk", [1, 7, 64, 512])
def test_chunked_attention_equals_the_dense_mask_in_loss_and_gradients(chunk):
    """Query blocks cut through images and documents (chunk 7), one query at a time, or the whole row:
    the same outputs and gradients as sdpa with the dense mask; its blocks build no (L, L) mask."""
    tok = ByteTokenizer()
    dense, _ = make_model(attention="sdpa")
    chunked, cfg = make_model(attention="chunked")
    chunked.model_cfg.attention_chunk = chunk
    chunked.load_state_dict(dense.state_dict())
    torch.manual_seed(2)
    images = [torch.rand(3, 16, 16) * 2 - 1 for _ in range(2)]
    batch = two_document_batch(dense, tok, images)
    results = []
    for model in (dense, chunked):
        model.zero_grad()
        hidden, noise = run(model, batch)
        (hidden.square().mean() + sum(n.square().mean() for n in noise)).backward()
        results.append((hidden, noise, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (h0, n0, g0), (h1, n1, g1) = results
    assert torch.allclose(h0, h1, atol=1e-5) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(n0, n1))
    assert g0.keys() == g1.keys() and all(torch.allclose(g0[k], g1[k], atol=1e-5) for k in g0)
    mask = ChunkedMask(batch.doc_ids, batch.image_ids, chunk)
    L = batch.doc_ids.shape[1]
    dense_mask = transfusion_mask(batch.doc_ids, batch.image_ids)
    for a, b, lo, hi, block in mask.blocks():  # each block is the dense mask's, and nothing outside it is allowed
        assert torch.equal(block[:, 0], dense_mask[:, a:b, lo:hi])
        assert not dense_mask[:, a:b, :lo].any() and not dense_mask[:, a:b, hi:].any()
        assert b - a <= chunk and (chunk >= L or hi - lo < L)


def test_unknown_attention_and_adapter_are_rejected():
    with pytest.raises(ValueError, match="model.attention"):
        load_config("debug", overrides=["model.attention=fast"])
    with pytest.raises(ValueError, match="image.adapter"):
        load_config("debug", overrides=["image.adapter=conv"])


def test_image_size_not_divisible_by_patches_is_an_error():
    model, _ = make_model()
    with pytest.raises(ValueError, match="not divisible"):
        model.num_patches((15, 16))


def test_document_longer_than_context_is_an_error():
    from transfusion.data.packing import truncate

    tok = ByteTokenizer()
    model, _ = make_model()
    img = torch.zeros(3, 16, 16)
    lay = layout([Text("x" * 200), Image(img)], [img], [1000], tok, model.num_patches)
    with pytest.raises(ValueError, match="data.seq_len"):
        truncate(lay, 128)
    text_only = truncate(Layout(list(range(300))), 128)
    assert len(text_only.ids) == 128


def test_mask_with_cached_keys_equals_the_rows_of_the_full_mask():
    doc_ids = torch.tensor([[0] * 8 + [1] * 2])
    image_ids = torch.tensor([[-1, -1, -1, 0, 0, 0, -1, -1, -1, -1]])
    full = transfusion_mask(doc_ids, image_ids)
    for split in range(1, 10):
        part = transfusion_mask(doc_ids[:, split:], image_ids[:, split:], doc_ids[:, :split], image_ids[:, :split])
        assert torch.equal(part, full[:, split:])
