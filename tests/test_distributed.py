"""Multi-process training: 2 processes (torchrun, gloo, CPU) train exactly what one does."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from transfusion.autoencoders import IdentityAutoencoder
from transfusion.components import build_components
from transfusion.config import load_config
from transfusion.diffusion import Diffusion
from transfusion.distributed import World, rows_of
from transfusion.model.transfusion import Transfusion
from transfusion.tokenizer import ByteTokenizer
from transfusion.step import train_step

SETTINGS = ["train.steps=6", "train.log_every=1", "train.checkpoint_every=3", "train.eval_samples=2",
            "sampling.steps=2", "train.threads=1"]


def train(out, *extra, processes=1):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    cmd = [*launcher, "-m", "transfusion.cli", "train", "--preset", "debug", "--out", str(out), *SETTINGS, *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def losses(out):
    rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["lm"], r.get("ddpm", r.get("flow"))) for r in rows]


def weights(out, step, name="model"):
    return load_file(out / "checkpoints" / f"step_{step:06d}" / f"{name}.safetensors")


def assert_same_run(a, b, step=6, name="model"):
    for (s1, lm1, d1), (s2, lm2, d2) in zip(losses(a), losses(b), strict=True):
        assert s1 == s2 and lm1 == pytest.approx(lm2, rel=1e-5) and d1 == pytest.approx(d2, rel=1e-5)
    wa, wb = weights(a, step, name), weights(b, step, name)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < 1e-5, worst


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return train(tmp_path_factory.mktemp("single") / "run")


def test_ddp_on_two_processes_trains_what_one_process_does(single, tmp_path):
    ddp = train(tmp_path / "ddp", "train.parallel=ddp", processes=2)
    assert_same_run(single, ddp)


@pytest.mark.slow
def test_fsdp_checkpoint_from_two_processes_resumes_on_one(single, tmp_path):
    """FSDP2 with 2 micro-batches per process; its sharded step-3 checkpoint then finishes on 1 process."""
    fsdp = train(tmp_path / "fsdp", "train.parallel=fsdp", "train.grad_accum=2", "train.ema_decay=0.5", processes=2)
    assert_same_run(single, fsdp)
    shards = list((fsdp / "checkpoints" / "step_000006" / "train_state").glob("*.distcp"))
    assert len(shards) == 2  # each process wrote its own shard

    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000006")
    train(resumed, "train.ema_decay=0.5")
    assert_same_run(single, resumed)
    # the EMA continued from the saved one: resuming changed nothing
    ema_a, ema_b = weights(fsdp, 6, "ema"), weights(resumed, 6, "ema")
    assert max((ema_a[k] - ema_b[k]).abs().max().item() for k in ema_a) < 1e-5
    from transfusion.checkpoint import load_checkpoint

    averaged = load_checkpoint(resumed, ema=True).model.state_dict()
    assert all(torch.equal(averaged[k], ema_b[k]) for k in ema_b)
    assert not all(torch.equal(averaged[k], weights(resumed, 6)[k]) for k in ema_b)
    with pytest.raises(FileNotFoundError, match="no EMA weights"):
        load_checkpoint(single, ema=True)


@pytest.mark.slow
def test_fsdp_streaming_a_sharded_corpus_trains_what_one_process_does(tmp_path):
    """Each process streams its own rows' shards with worker processes; same run as one process."""
    from transfusion.data.precompute import write_corpus

    write_corpus("shapes", tmp_path / "corpus", docs=120, per_shard=30, image_size=16)
    corpus = f"data.dataset={tmp_path / 'corpus'}"
    one = train(tmp_path / "one", corpus)
    two = train(tmp_path / "two", corpus, "train.parallel=fsdp", processes=2)
    assert_same_run(one, two)
    state = json.loads((two / "checkpoints" / "step_000006" / "state.json").read_text())
    assert set(state["data"]["streams"]) == {"0", "1", "2", "3"}  # every process's streams, merged


@pytest.mark.slow
def test_fsdp_with_flow_matching_and_mot_trains_what_one_process_does(tmp_path):
    options = ["diffusion.objective=flow", "model.mot=true"]  # both switches in one run: each shards and matches
    one, two = train(tmp_path / "one", *options), train(tmp_path / "two", *options, "train.parallel=fsdp", processes=2)
    assert_same_run(one, two)
    assert any(".image." in k for k in weights(two, 6)) and "flow" in (two / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_lora_under_fsdp_and_ddp_trains_what_one_process_does(single, pretrained_lm_untied, tmp_path):
    """A LoRA fine-tune of a run, and one from a pretrained language model (its image layers
    train in full): the adapters are sharded (FSDP2) or replicated (DDP) with their layers, the
    frozen weights get no gradient, and two processes train what one does."""
    lora = [f"train.init_from={single}", "train.lora.rank=4", "train.lora.modules=[attention,mlp,image]",
            "optim.warmup_steps=0"]
    one = train(tmp_path / "one", *lora)
    for parallel in ("fsdp", "ddp"):
        two = train(tmp_path / parallel, *lora, f"train.parallel={parallel}", processes=2)
        assert_same_run(one, two, name="adapter_model")
        assert not (two / "checkpoints" / "step_000006" / "model.safetensors").exists()
    from_lm = [f"model.init_from={pretrained_lm_untied[2]}", "model.mot=true", "train.lora.rank=4",
               "train.lora.modality=text", "optim.warmup_steps=0"]
    assert_same_run(train(tmp_path / "lm_one", *from_lm),
                    train(tmp_path / "lm_fsdp", *from_lm, "train.parallel=fsdp", processes=2), name="adapter_model")


@pytest.mark.slow
def test_fsdp_from_a_pretrained_language_model_trains_what_one_process_does(pretrained_lm, pretrained_lm_untied,
                                                                            tmp_path):
    start = [f"model.init_from={pretrained_lm_untied[2]}", "model.mot=true", "model.freeze_text=true"]
    assert_same_run(train(tmp_path / "one", *start), train(tmp_path / "two", *start, "train.parallel=fsdp", processes=2))
    tied = [f"model.init_from={pretrained_lm[2]}"]  # tied embeddings (SmolLM): one matrix, sharded once
    three = train(tmp_path / "three", *tied)
    assert_same_run(three, train(tmp_path / "four", *tied, "train.parallel=fsdp", processes=2))
    assert_same_run(three, train(tmp_path / "five", *tied, "train.parallel=ddp", processes=2))


def test_rows_split_the_global_batch_over_processes_and_micro_batches():
    cfg = load_config("debug", overrides=["data.batch_size=8", "train.grad_accum=2"])
    rows = [list(rows_of(World(rank, 2), cfg, micro)) for rank in range(2) for micro in range(2)]
    assert rows == [[0, 1], [2, 3], [4, 5], [6, 7]]
    cfg = load_config("debug", overrides=["data.batch_size=6", "train.grad_accum=2"])
    with pytest.raises(ValueError, match="split evenly"):
        rows_of(World(0, 2), cfg, 0)


def test_token_budget_sets_the_rows_per_step():
    cfg = load_config("debug", overrides=["data.tokens_per_step=1024"])
    assert cfg.data.batch_size == 1024 // cfg.data.seq_len
    with pytest.raises(ValueError, match="fewer than one row"):
        load_config("debug", overrides=["data.tokens_per_step=10"])


def debug_run(*overrides):
    cfg = load_config("debug", overrides=list(overrides))
    return cfg, build_components(cfg, tokenizer=ByteTokenizer(), autoencoder=IdentityAutoencoder())


def test_batch_rows_do_not_depend_on_how_the_batch_is_split():
    _, run = debug_run()
    builder = run.batches
    whole = builder.batch_at(5, seed=1)
    halves = [builder.batch_at(5, seed=1, rows=range(a, a + 2)) for a in (0, 2)]
    assert torch.equal(whole.tokens, torch.cat([h.tokens for h in halves]))
    assert torch.equal(whole.t, torch.cat([h.t for h in halves]))
    assert all(torch.equal(a, b) for a, b in zip(whole.noise, [n for h in halves for n in h.noise], strict=True))


def test_gradient_accumulation_gives_the_whole_batch_gradient():
    cfg, run = debug_run("data.text_fraction=0.3")
    model, builder = run.model, run.batches
    from contextlib import nullcontext

    def grads(batches):
        model.zero_grad()
        out, tokens = train_step(model, batches, Diffusion(), cfg, World(), nullcontext)
        assert tokens == sum(b.num_tokens for b in batches)
        return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole, g1 = grads([builder.batch_at(0, seed=0)])
    split, g2 = grads([builder.batch_at(0, seed=0, rows=range(r, r + 1)) for r in range(4)])
    assert whole == pytest.approx(split, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2, strict=True))


def test_a_model_built_on_the_meta_device_initialises_like_one_built_in_place():
    cfg = load_config("debug")
    eager = Transfusion(cfg.model, cfg.image, 300, 3, seed=cfg.train.seed)
    with torch.device("meta"):
        meta = Transfusion(cfg.model, cfg.image, 300, 3, seed=cfg.train.seed)
    meta.to_empty(device="cpu")
    meta.init_weights(cfg.train.seed)
    a, b = eager.state_dict(), meta.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(eager.trunk.rope, meta.trunk.rope)
    other = Transfusion(cfg.model, cfg.image, 300, 3, seed=1)
    assert not torch.equal(other.token_embed.weight, eager.token_embed.weight)
