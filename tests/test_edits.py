"""Editing: the triples and their grammar, the edit reader, training on triples, fine-tuning, edit / eval."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from transfusion.autoencoders import IdentityAutoencoder
from transfusion.config import load_config
from transfusion.data.document import Image, Text
from transfusion.data.edits import EDIT_KINDS, EditsDataset, sample_edit
from transfusion.data.ondisk import BadRecordError, JsonlDocuments
from transfusion.data.packing import CONTEXT_IMAGE, arrange, layout, pack
from transfusion.data.shapes import caption_of, parse_caption, render
from transfusion.diffusion import Diffusion
from transfusion.metrics.edit_reader import score_edit, summarise_edits
from transfusion.model.transfusion import Transfusion
from transfusion.objective import compute_losses, loss_counts
from transfusion.tokenizer import ByteTokenizer


def test_edits_are_deterministic_cover_every_kind_and_split_apart():
    train, test = EditsDataset("train"), EditsDataset("test")
    assert [train.edit(i).instruction for i in range(12)] == [EditsDataset("train").edit(i).instruction
                                                              for i in range(12)]
    assert {train.edit(i).kind for i in range(12)} == set(EDIT_KINDS)
    assert not {train.edit(i).instruction for i in range(300)} >= {test.edit(i).instruction for i in range(300)}
    doc = test[0]
    assert doc.kind == "edit" and [type(s) for s in doc.segments] == [Image, Text, Image]
    assert doc.segments[1].text == test.edit(0).instruction


def test_every_source_and_target_has_a_caption_in_the_shapes_grammar():
    rng = np.random.default_rng(0)
    for kind in EDIT_KINDS:
        for _ in range(20):
            edit = sample_edit(rng, kind)
            for scene in (edit.source, edit.target):
                assert parse_caption(caption_of(scene)) is not None, (kind, caption_of(scene))


def test_the_reader_passes_the_truth_and_fails_the_unchanged_source_on_success_only():
    data = EditsDataset("test", length=120)
    truth, source = [], []
    for i in range(len(data)):
        edit = data.edit(i)
        target = render(edit.target)
        truth.append(score_edit(target, edit, target))
        source.append(score_edit(render(edit.source), edit, target))
    t, s = summarise_edits(truth), summarise_edits(source)
    assert t["all"]["success"] == 1 and t["all"]["preservation"] == 1 and t["all"]["pixel_error"] == 0
    assert s["all"]["success"] == 0 and s["all"]["preservation"] == 1 and s["all"]["pixel_error"] > 0.05
    assert set(t) == {*EDIT_KINDS, "all"}


def test_preservation_fails_when_an_unnamed_attribute_changes():
    rng = np.random.default_rng(1)
    edit = sample_edit(rng, "recolour")
    target = render(edit.target)
    blank = torch.full_like(target, -1.0)
    assert not score_edit(blank, edit)["preservation"] and not score_edit(blank, edit)["success"]
    moved = torch.roll(target, shifts=8, dims=2)  # the right colour, in the wrong place
    assert score_edit(moved, edit)["success"] and not score_edit(moved, edit)["preservation"]


def test_edit_documents_keep_the_source_clean_and_drop_for_both_guidance_branches():
    cfg = load_config("debug").diffusion
    doc = EditsDataset("train", size=16)[0]
    seen = {}
    rng = random.Random(0)
    for _ in range(400):
        segments, caps = arrange(doc, rng, cfg)
        seen[tuple(type(s).__name__ for s in segments)] = caps
    assert seen == {("Image", "Text", "Image"): [CONTEXT_IMAGE, cfg.timesteps],
                    ("Image", "Image"): [CONTEXT_IMAGE, cfg.timesteps],  # image-only branch
                    ("Image",): [cfg.timesteps]}  # unconditional branch


def _edit_batch(size=16):
    cfg = load_config("debug")
    tok, ae = ByteTokenizer(), IdentityAutoencoder()
    model = Transfusion.build(cfg.model, cfg.image, tok, ae, seed=0)
    doc = EditsDataset("train", size=size)[1]
    pixels = [s.pixels for s in doc.segments if isinstance(s, Image)]
    lay = layout(doc.segments, pixels, [CONTEXT_IMAGE, 1000], tok, model.num_patches)
    batch, _ = pack([lay], 1, cfg.data.seq_len, tok.pad_id)
    return model, batch


def test_a_context_image_carries_no_loss_and_ignores_its_noise():
    model, batch = _edit_batch()
    assert loss_counts(batch, model) == {"lm": batch.num_text_targets, "ddpm": 1}
    batch.t = torch.tensor([0, 400])
    losses = []
    for seed in (0, 1):  # only the context image's noise differs
        g = torch.Generator().manual_seed(seed)
        batch.noise = [torch.randn(batch.latents[0].shape, generator=g), torch.ones_like(batch.latents[1])]
        losses.append(compute_losses(model, batch, Diffusion(), 5.0)["total"].item())
    assert losses[0] == losses[1]
    batch.noise[1] = -batch.noise[1]  # the target image's noise does matter
    assert compute_losses(model, batch, Diffusion(), 5.0)["total"].item() != losses[0]


def test_the_tokens_objective_does_not_predict_a_context_images_codes():
    model, batch = _edit_batch()
    codes = [torch.zeros(4, 4, dtype=torch.long), torch.ones(4, 4, dtype=torch.long)]
    tokens = batch.images_as_tokens(codes, offset=1000)
    targets = tokens.targets[tokens.targets >= 1000]
    assert len(targets) == 16 and bool((targets == 1001).all())  # only the output image's codes


def test_a_manifest_triple_is_an_edit_unless_it_says_otherwise(tmp_path):
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        PILImage.new("RGB", (8, 8), colour).save(tmp_path / name)
    triple = {"segments": [{"image": "a.png"}, {"text": "make it blue"}, {"image": "b.png"}]}
    lines = [triple, {**triple, "kind": "interleaved"}, {**triple, "kind": "pair"}]
    (tmp_path / "edits.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    docs = JsonlDocuments(tmp_path / "edits.jsonl", image_size=8)
    assert docs[0].kind == "edit" and docs[1].kind == "interleaved"
    with pytest.raises(BadRecordError, match=r"edits.jsonl:3: \"kind\" 'pair' does not fit"):
        docs[2]


def test_the_data_shares_must_fit_in_one():
    with pytest.raises(ValueError, match="sum to at most 1"):
        load_config("debug", overrides=["data.edit_fraction=0.95"])


def test_a_fine_tune_s_start_is_the_same_however_it_is_spelled(debug_run, monkeypatch):
    """A fine-tune resumed with its start spelled another way (relative, from another directory)
    has the config it was started with, so resuming is allowed."""
    from transfusion.checkpoint import with_start_fields

    spelled = with_start_fields(load_config("debug", overrides=[f"train.init_from={debug_run}"]))
    monkeypatch.chdir(debug_run.parent)
    other = with_start_fields(load_config("debug", overrides=[f"train.init_from={debug_run.name}"]))
    assert other == spelled and Path(spelled.train.init_from).is_absolute()


@pytest.fixture(scope="module")
def edit_run(debug_run, fine_tune):
    """The shared debug run, fine-tuned briefly on edits (``train.init_from``)."""
    return fine_tune("edit", debug_run, "data.edit_fraction=0.5", "model.dim=32")


def test_fine_tuning_starts_from_the_run_and_keeps_its_tokenizer_and_autoencoder(debug_run, edit_run):
    from transfusion.checkpoint import load_checkpoint, resolve_checkpoint, with_start_fields

    start = load_checkpoint(debug_run)
    cfg = with_start_fields(load_config("debug", overrides=[f"train.init_from={debug_run}", "model.dim=32"]))
    assert cfg.model == start.config.model  # the start's architecture, whatever the preset said
    assert cfg.data.tokenizer == str(resolve_checkpoint(debug_run) / "tokenizer.json")
    tuned = load_checkpoint(edit_run)
    assert tuned.tokenizer.to_json() == start.tokenizer.to_json()
    last = json.loads((edit_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and last["ddpm"] > 0
    # two steps at the fine-tune's warmup learning rate move the weights a little, not from scratch
    drift = max((a - b).abs().max().item() for a, b in zip(tuned.model.state_dict().values(),
                                                            start.model.state_dict().values()))
    assert 0 < drift < 0.05


def test_fine_tuning_from_a_missing_run_is_a_clear_error(tmp_path):
    from transfusion.cli import COMMANDS

    with pytest.raises(FileNotFoundError, match="no such checkpoint or run folder"):
        COMMANDS["train"](["--preset", "debug", "--out", str(tmp_path / "x"), f"train.init_from={tmp_path / 'nope'}"])


def test_edit_command_and_the_edit_suite(edit_run, tmp_path):
    from transfusion.cli import COMMANDS
    from transfusion.visualize import save_image

    edit = EditsDataset("test", size=16).edit(0)
    save_image(render(edit.source, 16), tmp_path / "in.png")
    COMMANDS["edit"]([str(edit_run), str(tmp_path / "in.png"), edit.instruction, "--n", "2", "--steps", "2",
                      "--image-cfg", "1.5", "--out", str(tmp_path / "out")])
    record = json.loads((tmp_path / "out" / "001.json").read_text())
    assert record["prompt"] == edit.instruction and record["image_guidance"] == 1.5 and record["seed"] == 1
    assert record["edit"] is True  # the settings written are the ones the edit ran with
    assert PILImage.open(tmp_path / "out" / "000.png").size == (16, 16) and (tmp_path / "out" / "grid.png").is_file()

    COMMANDS["eval"]([str(edit_run), "--suite", "edit", "--n", "6", "--steps", "2", "--out", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())["edit"]
    assert set(report) == {"settings", "model", "source_unchanged", "text_to_image"}
    assert report["model"]["all"]["n"] == 6 and set(report["model"]) == {*EDIT_KINDS, "all"}
    unchanged = report["source_unchanged"]["all"]
    assert unchanged["success"] == 0 and unchanged["preservation"] == 1
    assert "## Editing" in (tmp_path / "r.md").read_text() and (tmp_path / "r_edit.png").is_file()


def test_image_guidance_changes_an_edit_and_equal_scales_are_one_scale(edit_run):
    from transfusion.checkpoint import load_checkpoint
    from transfusion.engine import Engine, Request, tasks

    run = load_checkpoint(edit_run)
    engine = Engine(run.model, run.tokenizer, run.autoencoder, run.config)
    doc = EditsDataset("test", size=16)[0]
    source, text = doc.segments[0].pixels, doc.segments[1].text
    one = tasks.edit(engine, [source], [text], Request(steps=2, guidance=3.0)).images[0]
    same = tasks.edit(engine, [source], [text], Request(steps=2, guidance=3.0, image_guidance=3.0)).images[0]
    other = tasks.edit(engine, [source], [text], Request(steps=2, guidance=3.0, image_guidance=1.0)).images[0]
    assert torch.equal(one, same) and not torch.equal(one, other)
    assert one.shape == source.shape


def test_an_instruction_is_given_not_predicted_but_the_image_after_it_is_started():
    from transfusion.batch import IGNORE
    from transfusion.tokenizer import ByteTokenizer

    cfg = load_config("debug").diffusion
    cfg.caption_dropout = 0.0
    tok = ByteTokenizer()
    doc = EditsDataset("train", size=16)[0]
    segments, caps = arrange(doc, random.Random(0), cfg)
    pixels = [s.pixels for s in segments if isinstance(s, Image)]
    lay = layout(segments, pixels, caps, tok, lambda hw: 4)
    batch, _ = pack([lay], 1, 128, tok.pad_id)
    targets = [t for t in batch.targets[0].tolist() if t != IGNORE]
    assert targets == [tok.boi_id, tok.boi_id, tok.eos_id]  # BOI of the source, BOI after the instruction, EOS
    codes = [torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.long)]
    as_tokens = batch.images_as_tokens(codes, offset=1000).targets[0]
    text_targets = [t for t in as_tokens.tolist() if t != IGNORE and t < 1000]
    assert text_targets == [tok.boi_id, tok.eoi_id, tok.boi_id, tok.eoi_id, tok.eos_id]  # still no instruction
