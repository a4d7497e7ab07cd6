"""Sharded corpora: streamed with worker processes, resumed in place, latents precomputed."""

import json
import tarfile

import pytest
import torch

from transfusion.autoencoders import IdentityAutoencoder, KLAutoencoder, load_autoencoder, save_autoencoder
from transfusion.components import build_components
from transfusion.config import load_config
from transfusion.data.precompute import precompute_latents
from transfusion.data.shapes import ShapesDataset
from transfusion.data.shards import Position, ShardedCorpus, _add, write_shard
from transfusion.data.sources import build_source
from transfusion.tokenizer import ByteTokenizer

DOCS_PER_SHARD = 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 good shards of 6 documents (2 with an added corrupt record), and one cut short."""
    folder = tmp_path_factory.mktemp("corpus")
    data = ShapesDataset("train", size=16)
    for i in range(3):
        write_shard(folder / f"shard-{i}.tar", (data[i * DOCS_PER_SHARD + j] for j in range(DOCS_PER_SHARD)),
                    start=i * 100)
    with tarfile.open(folder / "shard-1.tar", "a") as tar:
        _add(tar, "bad1.json", b"{not json")
    with tarfile.open(folder / "shard-2.tar", "a") as tar:
        _add(tar, "bad2.json", json.dumps({"segments": [{"text": "a"}, {"image": "0.png"}]}).encode())
        _add(tar, "bad2.0.png", b"not a png")
    with tarfile.open(folder / "shard-0.tar") as tar:
        last = tar.getmembers()[-1]  # a shard cut off inside its last image
    (folder / "shard-3.tar").write_bytes((folder / "shard-0.tar").read_bytes()[: last.offset_data + last.size // 2])
    return folder


def test_corrupt_records_and_a_cut_shard_are_reported_and_skipped(corpus):
    stream = ShardedCorpus(str(corpus), 16, streams=1).documents(0, Position())
    docs, errors = [], []
    while len(docs) + len(errors) < 40:
        after, doc, error = next(stream)
        if after.epoch > 0:
            break
        (docs if doc is not None else errors).append(doc or error)
    assert len(errors) == 3, errors
    assert any("bad json" in e for e in errors) and any("cannot decode 0.png" in e for e in errors)
    assert any("unreadable" in e and "shard-3.tar" in e for e in errors)
    assert len(docs) == 4 * DOCS_PER_SHARD - 1  # the cut shard gives all but its broken record
    assert all(d.images and d.images[0].pixels.shape == (3, 16, 16) for d in docs)


def builder_for(corpus, *overrides, autoencoder=IdentityAutoencoder()):
    cfg = load_config("debug", overrides=[f"data.dataset={corpus}", "data.workers=2", *overrides])
    return build_components(cfg, tokenizer=ByteTokenizer(), autoencoder=autoencoder).batches


def test_a_resumed_stream_neither_repeats_nor_skips_on_any_number_of_processes(corpus):
    straight = builder_for(corpus)
    straight.source.open(range(4))
    batches = [straight.batch_at(step, 0).tokens for step in range(6)]
    assert straight.source.skipped >= 3
    replay = builder_for(corpus)
    replay.source.open(range(4))
    for step in range(3):
        replay.batch_at(step, 0)
    saved = json.loads(json.dumps(replay.source.state()))  # as a checkpoint's state.json holds it

    one = builder_for(corpus)
    one.source.open(range(4), saved)
    two = [builder_for(corpus) for _ in range(2)]
    for half, b in zip((range(0, 2), range(2, 4)), two):
        b.source.open(half, saved)
    for step in range(3, 6):
        assert torch.equal(one.batch_at(step, 0).tokens, batches[step])
        parts = [b.batch_at(step, 0, rows) for b, rows in zip(two, (range(0, 2), range(2, 4)))]
        assert torch.equal(torch.cat([p.tokens for p in parts]), batches[step])


def test_every_document_of_a_stream_is_used_once_per_epoch(corpus):
    b = builder_for(corpus, "data.batch_size=1", "diffusion.caption_dropout=0", "diffusion.image_first_prob=0")
    b.source.open(range(1))
    used = 0
    while b.source.feed.position[0].epoch == 0:
        used += int(b.batch_at(used, 0).doc_ids.max()) + 1
    # the last row ran on into the next epoch: count what it took from there
    stream, beyond = b.source.corpus.documents(0, Position(1, 0, 0)), 0
    while True:
        after, doc, _ = next(stream)
        beyond += doc is not None
        if after == b.source.feed.position[0]:
            break
    assert used - beyond == 4 * DOCS_PER_SHARD - 1  # every good record of the epoch, none twice


def test_precomputed_latents_are_the_autoencoder_s_and_train_without_encoding(corpus, tmp_path):
    torch.manual_seed(0)
    ae = KLAutoencoder(latent_channels=4, downsample=2, width=8)
    save_autoencoder(ae, tmp_path / "ae")
    info = precompute_latents(str(corpus), tmp_path / "ae", tmp_path / "latents", workers=2, image_size=16)
    assert info["skipped"] == 3 and info["documents"] == 4 * DOCS_PER_SHARD - 1
    latents = ShardedCorpus(str(tmp_path / "latents"), 16, streams=1)
    assert latents.latents
    images = ShardedCorpus(str(corpus), 16, streams=1)
    doc, ref = latents.head(1)[0], images.head(1)[0]
    with torch.no_grad():
        expected = ae.encode(ref.images[0].pixels[None])[0]
    assert doc.images[0].pixels is None and torch.allclose(doc.images[0].latents, expected, atol=1e-5)

    class NoEncoder(IdentityAutoencoder):
        def encode(self, pixels):
            raise AssertionError("a latent corpus must not be encoded again")

    builder = builder_for(tmp_path / "latents", "image.patch_size=1", autoencoder=NoEncoder(4))
    batch = builder.batch_at(0, 0)
    assert batch.latents and batch.latents[0].shape == (4, 8, 8)


def test_a_latent_corpus_names_its_autoencoder_and_a_run_uses_it(corpus, tmp_path):
    """docs/scale.md: `train ... data.dataset=latents/` with the preset's autoencoder.name=train runs on
    the corpus's own autoencoder (it used to train a fresh one on the latents and crash)."""
    from transfusion.autoencoders import autoencoder_fingerprint
    from transfusion.cli import COMMANDS
    from transfusion.train import prepare_autoencoder

    torch.manual_seed(0)
    ae = KLAutoencoder(latent_channels=4, downsample=2, width=8)
    save_autoencoder(ae, tmp_path / "ae")
    precompute_latents(str(corpus), tmp_path / "ae", tmp_path / "latents", workers=1, image_size=16)
    settings = [f"data.dataset={tmp_path / 'latents'}", "autoencoder.name=train", "image.patch_size=1",
                "train.steps=2", "train.eval_samples=2", "sampling.steps=2", "data.tokenizer=bytes"]
    run = tmp_path / "run"
    COMMANDS["train"](["--preset", "debug", "--out", str(run), *settings])
    used = load_autoencoder(run / "autoencoder")
    assert autoencoder_fingerprint(used) == autoencoder_fingerprint(ae)
    assert json.loads((run / "report.json").read_text())["t2i"]["settings"]["samples"] == 2

    cfg = load_config("debug", overrides=settings)
    source = build_source(cfg)
    cfg.autoencoder.name = str(tmp_path / "ae")  # the same autoencoder, named: accepted
    assert autoencoder_fingerprint(prepare_autoencoder(cfg, tmp_path / "named", source)) == autoencoder_fingerprint(ae)
    save_autoencoder(KLAutoencoder(latent_channels=4, downsample=2, width=8), tmp_path / "other")
    for wrong in (str(tmp_path / "other"), "identity"):
        cfg.autoencoder.name = wrong
        with pytest.raises(ValueError, match="holds latents of the autoencoder .* is another one"):
            prepare_autoencoder(cfg, tmp_path / "wrong", source)


def test_training_on_shards_resumes_in_place(corpus, tmp_path):
    from transfusion.cli import COMMANDS

    settings = [f"data.dataset={corpus}", "train.steps=4", "train.checkpoint_every=2", "train.log_every=1",
                "train.eval_samples=2", "sampling.steps=2"]
    out = tmp_path / "run"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), *settings])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_records"] >= 3
    state = json.loads((out / "checkpoints" / "step_000002" / "state.json").read_text())
    assert set(state["data"]["streams"]) == {"0", "1", "2", "3"}

    import shutil

    shutil.rmtree(out / "checkpoints" / "step_000004")
    COMMANDS["train"](["--preset", "debug", "--out", str(out), *settings])
    resumed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lm"] for r in resumed] == pytest.approx([r["lm"] for r in rows], rel=1e-5)
    assert [r["ddpm"] for r in resumed] == pytest.approx([r["ddpm"] for r in rows], rel=1e-5)


def test_ctrl_c_mid_step_saves_the_state_after_that_whole_step_and_resume_skips_no_batch(corpus, tmp_path,
                                                                                         monkeypatch):
    import os
    import signal

    import transfusion.train as train_module
    from transfusion.checkpoint import list_checkpoints
    from transfusion.cli import COMMANDS

    settings = [f"data.dataset={corpus}", "train.steps=4", "train.checkpoint_every=100", "train.log_every=1",
                "train.eval_samples=2", "sampling.steps=2"]
    straight = tmp_path / "straight"
    COMMANDS["train"](["--preset", "debug", "--out", str(straight), *settings])
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]

    real, calls = train_module.train_step, []

    def interrupted(*args, **kwargs):  # Ctrl-C arrives in the middle of the second step
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", interrupted)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        COMMANDS["train"](["--preset", "debug", "--out", str(out), *settings])
    assert stopped.value.code == 130
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_000002"]  # after the whole step
    monkeypatch.setattr(train_module, "train_step", real)
    COMMANDS["train"](["--preset", "debug", "--out", str(out), *settings])
    resumed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["lm"] for r in resumed] == pytest.approx([r["lm"] for r in rows], rel=1e-5)
    assert [r["ddpm"] for r in resumed] == pytest.approx([r["ddpm"] for r in rows], rel=1e-5)
