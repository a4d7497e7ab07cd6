"""Exports never delete what they did not write, and replacing a folder survives a kill."""

import os
import shutil

import pytest

from transfusion.checkpoint import list_checkpoints, load_checkpoint
from transfusion.train_state import save_checkpoint
from transfusion.cli import main as cli
from transfusion.fileio import atomic_folder


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def run(debug_run, tmp_path):
    """A copy of the shared run that a test may point commands at."""
    return shutil.copytree(debug_run, tmp_path / "run")


@pytest.mark.parametrize("command", ["export-hf", "save-pretrained"])
def test_an_export_into_a_run_or_inside_one_is_refused_and_the_run_is_untouched(run, command, capsys):
    before = files_under(run)
    for target in (run, run / "checkpoints", list_checkpoints(run / "checkpoints")[-1]):
        for extra in ([], ["--overwrite"]):  # not even with --overwrite
            with pytest.raises(SystemExit):
                cli([command, str(run), str(target), *extra])
            assert "training run" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # nor a folder that holds a run
        cli([command, str(run), str(run.parent), "--overwrite"])
    assert "holds the training run" in capsys.readouterr().err
    assert files_under(run) == before
    assert load_checkpoint(run).step == 2


@pytest.mark.parametrize("command", ["export-hf", "save-pretrained"])
def test_a_folder_with_the_user_s_files_is_refused_unless_overwrite(run, tmp_path, command, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "model.safetensors").write_text("not ours either")  # a key name alone does not make an export
    with pytest.raises(SystemExit):
        cli([command, str(run), str(out)])
    err = capsys.readouterr().err
    assert "notes.txt" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "notes.txt").read_text() == "my notes"

    fresh = tmp_path / "fresh"
    cli([command, str(run), str(fresh)])
    written = files_under(fresh)
    cli([command, str(run), str(fresh)])  # an earlier export of the same kind is replaced
    assert files_under(fresh) == written
    other = "save-pretrained" if command == "export-hf" else "export-hf"
    with pytest.raises(SystemExit):  # but not by the other kind of export
        cli([other, str(run), str(fresh)])
    assert files_under(fresh) == written

    cli([command, str(run), str(out), "--overwrite"])
    assert not (out / "notes.txt").exists() and files_under(out) == written


def test_a_kill_between_the_renames_loses_nothing_and_the_next_write_restores(tmp_path, monkeypatch):
    final = tmp_path / "out"
    with atomic_folder(final) as tmp:
        (tmp / "a.txt").write_text("first")
    real_replace, calls = os.replace, []

    def killed_after_moving_the_old_aside(src, dst):
        calls.append(dst)
        real_replace(src, dst)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as a kill right after the first rename would

    monkeypatch.setattr(os, "replace", killed_after_moving_the_old_aside)
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(final) as tmp:
            (tmp / "a.txt").write_text("second")
    monkeypatch.setattr(os, "replace", real_replace)
    assert not final.exists() and (tmp_path / ".out.old" / "a.txt").read_text() == "first"  # whole, aside
    with atomic_folder(final) as tmp:  # the next write puts it back before replacing it
        assert (final / "a.txt").read_text() == "first"
        (tmp / "a.txt").write_text("third")
    assert (final / "a.txt").read_text() == "third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_resume_never_picks_a_half_deleted_checkpoint_and_pruning_renames_first(tmp_path, monkeypatch):
    from transfusion.autoencoders import IdentityAutoencoder
    from transfusion.config import load_config
    from transfusion.model.transfusion import Transfusion
    from transfusion.tokenizer import ByteTokenizer

    cfg, tok = load_config("debug"), ByteTokenizer()
    model = Transfusion(cfg.model, cfg.image, tok.vocab_size, 3)
    folder = tmp_path / "checkpoints"
    for step in (1, 2):
        save_checkpoint(folder, step, model, cfg, tok, IdentityAutoencoder())
    (folder / "step_000002" / "state.json").unlink()  # what a kill inside a delete leaves behind
    assert [p.name for p in list_checkpoints(folder)] == ["step_000001"]
    assert load_checkpoint(folder).step == 1

    real_rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):  # a kill while a deletion runs
        if str(path).endswith(".deleting") and os.path.exists(path):
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed)
    save_checkpoint(folder, 3, model, cfg, tok, IdentityAutoencoder())
    with pytest.raises(KeyboardInterrupt):  # pruning is killed while it deletes step 1
        save_checkpoint(folder, 4, model, cfg, tok, IdentityAutoencoder(), keep=1)
    names = sorted(p.name for p in folder.iterdir())
    assert "step_000003" in names and "step_000004" in names and "step_000001" not in names
    assert load_checkpoint(folder).step == 4
