"""Bad inputs and bad luck around a run: malformed YAML, a full disk, two writers, a missing
GPU, and the MFU's denominator measured where the run trains."""

import errno
import subprocess
import sys

import pytest
import torch

from transfusion.checkpoint import list_checkpoints, load_checkpoint
from transfusion.cli import COMMANDS
from transfusion.cli import main as cli
from transfusion.config import load_config
from transfusion.distributed import resolve_device
from transfusion.fileio import RunLock, RunLockedError

FAST = ["train.eval_samples=2", "sampling.steps=2"]


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 3\nmodel: [unclosed\n")
    with pytest.raises(ValueError, match=r"bad.yaml line \d+, column \d+ is not valid YAML"):
        load_config("debug", files=[bad])
    with pytest.raises(SystemExit):
        cli(["train", "--preset", "debug", "--out", str(tmp_path / "r"), str(bad)])
    err = capsys.readouterr().err
    assert "bad.yaml line" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="not a valid YAML value"):
        load_config("debug", overrides=["model.dim=[64"])


def test_training_onto_a_full_disk_stops_with_a_clear_error(tmp_path, monkeypatch, capsys):
    import transfusion.train_state as checkpoint_module

    real, calls = checkpoint_module.save_file, []

    def fills_up(*args, **kwargs):  # the second checkpoint finds the disk full
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", fills_up)
    out = tmp_path / "r"
    with pytest.raises(SystemExit):
        cli(["train", "--preset", "debug", "--out", str(out), "train.steps=4", "train.checkpoint_every=1", *FAST])
    err = capsys.readouterr().err
    assert "No space left" in err and "step_000001" in err and "Traceback" not in err
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_000001"]


def test_a_second_writer_is_refused_while_the_first_lives_and_a_stale_lock_never_blocks(tmp_path):
    out = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom transfusion.fileio import RunLock\n"
                               "lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"{out} is being written by a live run \\(pid {holder.pid}\\)"):
            COMMANDS["train"](["--preset", "debug", "--out", str(out), "train.steps=1", *FAST])
        assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    finally:
        holder.kill()  # as kill -9 would: the lock file stays, the lock goes with the process
        holder.wait()
    assert (out / ".lock").is_file()
    COMMANDS["train"](["--preset", "debug", "--out", str(out), "train.steps=1", *FAST])
    assert load_checkpoint(out).step == 1
    with RunLock(out):  # and the finished run released it
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error seen without a GPU")
def test_asking_for_a_gpu_without_one_is_a_clear_error(debug_run, tmp_path, capsys):
    assert load_config("debug").train.device == "auto" and resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    for command in (["generate", str(debug_run), "a", "--out", str(tmp_path / "g")], ["caption", str(debug_run), "x.png"],
                    ["eval", str(debug_run)]):
        with pytest.raises(SystemExit):
            cli([*command, "--device", "cuda"])
        assert "no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no CUDA GPU"):
        COMMANDS["train"](["--preset", "debug", "--out", str(tmp_path / "t"), "train.device=cuda"])


@pytest.mark.cuda
def test_commands_run_on_the_gpu(debug_run, tmp_path):
    cli(["generate", str(debug_run), "a red circle", "--n", "2", "--steps", "2", "--device", "cuda",
         "--out", str(tmp_path / "g")])
    assert (tmp_path / "g" / "001.png").is_file()
    loaded = load_checkpoint(debug_run, device="cuda")
    assert next(loaded.model.parameters()).is_cuda


def test_mfu_peak_is_measured_on_the_training_device_and_dtype(tmp_path, monkeypatch):
    import transfusion.flops as flops_module

    asked = []

    def peak(seconds=0.5, n=1024, device="cpu", dtype=torch.float32, trials=1):
        asked.append((torch.device(device), dtype))
        return 1e12

    monkeypatch.setattr(flops_module, "matmul_peak_flops", peak)
    COMMANDS["train"](["--preset", "debug", "--out", str(tmp_path / "r"), "train.steps=1", "train.precision=bf16",
                       "data.batch_size=1", *FAST])
    assert asked == [(torch.device("cpu"), torch.bfloat16)]


def test_a_full_disk_while_writing_the_training_state_is_the_same_clear_error(tmp_path, monkeypatch, capsys):
    import contextlib

    import torch.distributed.checkpoint.filesystem as dcp_files

    real = dcp_files.FileSystem.create_stream

    @contextlib.contextmanager
    def fills_up(self, path, mode):  # the disk fills while the sharded training state is written
        if str(path).endswith(".distcp") and "step_000002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        with real(self, path, mode) as stream:
            yield stream

    monkeypatch.setattr(dcp_files.FileSystem, "create_stream", fills_up)
    out = tmp_path / "r"
    with pytest.raises(SystemExit):
        cli(["train", "--preset", "debug", "--out", str(out), "train.steps=4", "train.checkpoint_every=1", *FAST])
    err = capsys.readouterr().err
    assert "No space left" in err and "step_000001" in err and "Traceback" not in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000001"]


def test_a_finite_loss_with_nan_gradients_stops_before_any_nan_weight_is_written(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import transfusion.train as train_module

    real, calls = train_module.train_step, []

    def poisoned(model, *args, **kwargs):  # the third step's loss is finite, one gradient is NaN
        out = real(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))
        return out

    monkeypatch.setattr(train_module, "train_step", poisoned)
    out = tmp_path / "r"
    with pytest.raises(FloatingPointError, match="gradient norm is nan .* at step 2 .*weights were not updated"):
        COMMANDS["train"](["--preset", "debug", "--out", str(out), "train.steps=5", "train.checkpoint_every=1", *FAST])
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_000001", "step_000002"]
    for ckpt in list_checkpoints(out / "checkpoints"):
        assert all(torch.isfinite(t).all() for t in load_file(ckpt / "model.safetensors").values())


def test_resuming_a_hostile_training_state_runs_none_of_its_code(tmp_path, capsys):
    import os
    import pickle

    out, marker = tmp_path / "r", tmp_path / "pwned"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), "train.steps=1", *FAST])

    class Hostile:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    ckpt = list_checkpoints(out / "checkpoints")[-1]
    (ckpt / "train_state" / ".metadata").write_bytes(pickle.dumps(Hostile()))
    with pytest.raises(SystemExit):
        cli(["train", "--preset", "debug", "--out", str(out), "train.steps=2", *FAST])
    err = capsys.readouterr().err
    assert "posix.system" in err and "was not loaded" in err and "Traceback" not in err
    assert not marker.exists()


def test_the_run_lock_dies_with_the_run_even_while_its_data_workers_live(tmp_path):
    import signal
    import time

    out = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", "import multiprocessing as mp, sys, time\n"
                               "from transfusion.fileio import RunLock\n"
                               "lock = RunLock(sys.argv[1]).acquire()\n"
                               "worker = mp.get_context('fork').Process(target=time.sleep, args=(60,)); worker.start()\n"
                               "print(worker.pid, flush=True); time.sleep(120)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    worker = int(holder.stdout.readline())
    try:
        with pytest.raises(RunLockedError):
            RunLock(out).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        time.sleep(0.2)
        with RunLock(out):  # the worker still lives, and holds no lock
            assert subprocess.run(["kill", "-0", str(worker)]).returncode == 0
    finally:
        subprocess.run(["kill", "-9", str(worker)])


def test_an_image_first_noise_cap_above_the_timesteps_is_refused():
    with pytest.raises(ValueError, match="diffusion.image_first_max_t=2000 must be in \\[1, diffusion.timesteps=1000\\]"):
        load_config("debug", overrides=["diffusion.image_first_max_t=2000"])
