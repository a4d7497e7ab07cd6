"""Training: both losses fall, checkpoints round-trip, an interrupted run resumes exactly."""

import json
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from transfusion.autoencoders import IdentityAutoencoder
from transfusion.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint
from transfusion.train_state import save_checkpoint
from transfusion.components import build_components
from transfusion.config import load_config
from transfusion.diffusion import Diffusion, noise_process
from transfusion.objective import compute_losses
from transfusion.tokenizer import ByteTokenizer
from transfusion.cli import COMMANDS
from transfusion.fileio import DiskFullError
from transfusion.optim import build_optimizer, lr_at

FAST = ["train.eval_samples=2", "sampling.steps=2", "data.text_fraction=0.2"]


def debug_setup(*overrides):
    cfg = load_config("debug", overrides=list(overrides))
    torch.manual_seed(0)
    run = build_components(cfg, tokenizer=ByteTokenizer(), autoencoder=IdentityAutoencoder())
    return cfg, run.tokenizer, run.model, run.batches


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_overfitting_one_batch_lowers_both_losses(objective):
    cfg, _, model, builder = debug_setup(f"diffusion.objective={objective}")
    batch = builder.batch_at(0, seed=0)
    assert batch.latents and batch.num_text_targets > 0
    diffusion = noise_process(cfg.diffusion)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def losses():  # the batch's own t and noise every time: a fixed objective
        return compute_losses(model, batch, diffusion, 5.0)

    with torch.no_grad():
        before = {k: v.item() for k, v in losses().items()}
    for _ in range(60):
        out = losses()
        opt.zero_grad()
        out["total"].backward()
        opt.step()
    with torch.no_grad():
        after = {k: v.item() for k, v in losses().items()}
    assert set(before) == {"lm", objective, "total"}
    assert after["lm"] < 0.5 * before["lm"], (before, after)
    assert after[objective] < 0.7 * before[objective], (before, after)


def test_lr_schedule_warms_up_then_decays_to_min():
    cfg = load_config("debug", overrides=["train.steps=100", "optim.warmup_steps=10"])
    assert lr_at(0, cfg) == pytest.approx(cfg.optim.lr / 10)
    assert lr_at(9, cfg) == pytest.approx(cfg.optim.lr)
    assert lr_at(100, cfg) == pytest.approx(cfg.optim.min_lr)
    assert lr_at(50, cfg) < lr_at(20, cfg)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    cfg, tok, model, builder = debug_setup()
    opt = build_optimizer(model, cfg)
    path = save_checkpoint(tmp_path / "checkpoints", 7, model, cfg, tok, IdentityAutoencoder(), opt)
    loaded = load_checkpoint(tmp_path)  # a run folder resolves to its latest checkpoint
    assert loaded.path == path and loaded.step == 7
    batch = builder.batch_at(3, seed=0)
    model.eval()
    a = compute_losses(model, batch, Diffusion(), 5.0)
    b = compute_losses(loaded.model, batch, Diffusion(), 5.0)
    assert a["total"].item() == b["total"].item()


def test_checkpoints_are_atomic_and_pruned(tmp_path, monkeypatch):
    cfg, tok, model, _ = debug_setup()
    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(folder, step, model, cfg, tok, IdentityAutoencoder(), keep=2)
    assert [p.name for p in list_checkpoints(folder)] == ["step_000002", "step_000003"]

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("transfusion.train_state.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(folder, 4, model, cfg, tok, IdentityAutoencoder(), keep=2)
    with pytest.raises(DiskFullError, match=f"checkpoint step 4 into {folder}.*last good checkpoint is .*step_000003"):
        save_checkpoint(folder, 4, model, cfg, tok, IdentityAutoencoder(), keep=2)  # and it says what is safe
    # the failed write left nothing behind, and the last good checkpoint still loads
    assert sorted(p.name for p in folder.iterdir()) == ["step_000002", "step_000003"]
    assert load_checkpoint(folder).step == 3


def test_unknown_or_broken_checkpoint_gives_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        resolve_checkpoint(tmp_path)
    cfg, tok, model, _ = debug_setup()
    path = save_checkpoint(tmp_path / "checkpoints", 1, model, cfg, tok, IdentityAutoencoder())
    (path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
        load_checkpoint(path)


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    COMMANDS["train"](["--preset", "debug", "--out", str(straight), "train.steps=8", "train.checkpoint_every=4", *FAST])
    interrupted = tmp_path / "interrupted"
    # stop after 4 steps (its final checkpoint is step 4), then run the full length on the same folder
    COMMANDS["train"](["--preset", "debug", "--out", str(interrupted), "train.steps=4", "train.checkpoint_every=4", *FAST])
    shutil.rmtree(interrupted / "checkpoints" / "step_000004", ignore_errors=True)
    shutil.copytree(straight / "checkpoints" / "step_000004", interrupted / "checkpoints" / "step_000004")
    COMMANDS["train"](["--preset", "debug", "--out", str(interrupted), "train.steps=8", "train.checkpoint_every=4", *FAST])
    a = load_file(straight / "checkpoints" / "step_000008" / "model.safetensors")
    b = load_file(interrupted / "checkpoints" / "step_000008" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps))  # no step logged twice
    # training compute (6 N D) carries across the resume
    straight_rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["tokens_seen"] == straight_rows[-1]["tokens_seen"] > straight_rows[0]["tokens_seen"] > 0
    n_params = sum(t.numel() for t in a.values())
    assert rows[-1]["train_flops"] == 6 * n_params * rows[-1]["tokens_seen"]
    assert all(r["rss_mb"] > 50 for r in rows)  # resident memory, logged with every row


def test_resident_memory_follows_what_the_process_holds():
    from transfusion.flops import resident_mb

    before = resident_mb()
    held = torch.ones(64, 2**20)  # 256 MiB, touched
    during = resident_mb()
    del held
    assert 230 < during - before < 290, (before, during)


def test_kill_9_then_rerun_resumes(tmp_path):
    out = tmp_path / "run"

    def command(steps):
        return [sys.executable, "-m", "transfusion.cli", "train", "--preset", "debug", "--out", str(out),
                f"train.steps={steps}", "train.checkpoint_every=2", *FAST]

    proc = subprocess.Popen(command(400), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and len(list_checkpoints(out / "checkpoints")) < 2:
            time.sleep(0.1)
    finally:
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait()
    found = list_checkpoints(out / "checkpoints")
    assert found, "the run never wrote a checkpoint"
    for ckpt in found:  # every checkpoint on disk is readable
        load_checkpoint(ckpt)
    last = load_checkpoint(out).step
    result = subprocess.run(command(last + 2), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from" in result.stdout
    assert load_checkpoint(out).step == last + 2


def test_nan_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    import transfusion.step as step_module

    real = step_module.loss_sums
    calls = []

    def poisoned(*args, **kwargs):  # the third training step produces a NaN diffusion loss
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            total, count = out["ddpm"]
            out["ddpm"] = (total * float("nan"), count)
        return out

    monkeypatch.setattr(step_module, "loss_sums", poisoned)
    out = tmp_path / "r"
    with pytest.raises(FloatingPointError, match="loss is nan at step 2 .* rerun to resume"):
        COMMANDS["train"](["--preset", "debug", "--out", str(out), "train.checkpoint_every=1", *FAST])
    assert load_checkpoint(out).step == 2  # the checkpoint before the bad step is intact
    with pytest.raises(ValueError, match="optim.lr"):
        load_config("debug", overrides=["optim.lr=.nan"])


def test_resuming_with_another_config_is_refused(tmp_path):
    out = tmp_path / "r"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), "train.steps=2", *FAST])
    with pytest.raises(ValueError, match="model.dim"):
        COMMANDS["train"](["--preset", "debug", "--out", str(out), "model.dim=32", *FAST])


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'model.width'"):
        load_config("debug", overrides=["model.width=3"])
    with pytest.raises(ValueError, match="expects int"):
        load_config("debug", overrides=["model.dim=big"])
    assert load_config("debug", overrides=["model.norm_eps=1e-6"]).model.norm_eps == 1e-6  # YAML reads it as text
    with pytest.raises(ValueError, match="expects float"):
        load_config("debug", overrides=["model.norm_eps=tiny"])
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config("debug", files=[bad])


def test_eval_command_writes_a_report_and_a_card(debug_run, tmp_path, capsys):
    from transfusion.cli import main as cli_main

    out = debug_run
    report_path = tmp_path / "report.json"
    cli_main(["eval", str(out), "--n", "3", "--steps", "2", "--sampler", "ddim", "--out", str(report_path)])
    report = json.loads(report_path.read_text())
    assert report["t2i"]["settings"]["samples"] == 3
    assert (report["t2i"]["settings"]["steps"], report["t2i"]["settings"]["sampler"]) == (2, "ddim")
    assert report["t2i"]["fid"] > 0 and "299x299" in report["t2i"]["fid_settings"]["resize"]
    assert set(report["i2t"]["accuracy"]) >= {"colour", "shape", "exact"} and report["i2t"]["cider_d"] >= 0
    english, captions = report["text"]["english"], report["text"]["captions"]
    assert english["settings"]["documents"] == 3 and 1 < english["perplexity"] < 300  # byte vocabulary: <= 261
    assert captions["targets"] > 0 and captions["bits_per_byte"] > 0
    interleaved = report["interleaved"]  # every suite that applies to a shapes run, by default
    assert interleaved["settings"]["samples"] == 3 and 0 <= interleaved["accuracy"]["colour"] <= 1
    assert "edit" in report and "text" in report
    card = (tmp_path / "report.md").read_text()
    assert "FID" in card and "CIDEr-D" in card and (tmp_path / "report_t2i.png").is_file()
    assert "Interleaved documents" in card and (tmp_path / "report_interleaved.png").is_file()
    with pytest.raises(SystemExit):
        cli_main(["eval", str(tmp_path / "missing")])
    assert "no such checkpoint" in capsys.readouterr().err


def test_a_run_on_real_digits_trains_and_samples(tmp_path):
    out = tmp_path / "digits"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), "data.dataset=mnist", "train.steps=2", *FAST])
    report = json.loads((out / "report.json").read_text())
    judged = report["t2i"]["accuracy"]  # digits are judged by a classifier trained on the real digits
    assert 0 <= judged["digit"] <= 1 and judged["classifier_accuracy_on_real_test_digits"] > 0.93
    assert (out / "samples" / "step_000002.png").is_file()
    settings = json.loads((out / "samples" / "step_000002.json").read_text())["t2i"]["settings"]
    assert (settings["sampler"], settings["steps"], settings["seed"]) == ("ddpm", 2, 0)
    assert "handwritten" in (out / "samples" / "step_000002_captions.txt").read_text()
    from transfusion.checkpoint import load_checkpoint
    from transfusion.evaluate import default_suites, evaluate

    loaded = load_checkpoint(out)
    assert "interleaved" not in default_suites(loaded.config)  # the suite reads shapes documents only
    with pytest.raises(ValueError, match="needs shapes documents"):
        evaluate(loaded, ["interleaved"], 2)


def test_flex_attention_training_on_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match="flex trains on CUDA only"):
        COMMANDS["train"](["--preset", "debug", "--out", str(tmp_path / "r"), "model.attention=flex", *FAST])
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_the_ema_warmup_averages_the_recent_steps_not_the_random_start():
    """``train.ema_warmup``: decay min(ema_decay, (1 + t) / (10 + t)) at step t."""
    from transfusion.distributed import EMA

    def averaged(warmup: bool) -> float:
        layer = torch.nn.Linear(1, 1, bias=False)
        layer.weight.data.fill_(-100.0)  # the random start
        ema = EMA(layer, 0.999, warmup)
        for step in range(200):
            layer.weight.data.fill_(float(step))
            ema.update(layer, step)
        return ema.weights["weight"].item()

    expected = -100.0
    for step in range(200):
        decay = min(0.999, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * step
    assert abs(averaged(True) - expected) < 1e-3 and expected > 170  # about the last tenth of the run
    assert averaged(False) < -60  # a constant 0.999 still holds 82% of the start after 200 steps
    assert EMA(torch.nn.Linear(1, 1), 0.999, True).decay_at(0) == 0.1
