"""The paper-claim harness runs end to end (a minutes-long smoke version of claim (d)), and its rules."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def claims(monkeypatch):
    """The claims harness's modules, importable as their scripts import each other."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "paper_claims"))
    import a_scaling
    import common

    return common, a_scaling


def test_a_difference_is_a_result_only_beyond_the_spread(claims):
    common, _ = claims
    a, b = common.Row("linear", "A"), common.Row("chameleon", "B")
    fid = {"FID": (lambda r: r["fid"], True), "acc": (lambda r: r["acc"], False)}

    def results(fids_a, fids_b, accs=(0.5, 0.5, 0.5)):
        reports = {a: {1e13: [{"fid": f, "acc": x} for f, x in zip(fids_a, accs)]},
                   b: {1e13: [{"fid": f, "acc": 0.4} for f in fids_b]}}
        return common.Results([a, b], (1e13,), reports, fid)

    clear = results([100, 102, 104], [120, 121, 119])  # sd 2 and 1, difference 18
    assert clear.stat(a, 1e13, "FID") == (102, 2)
    assert clear.compare(a, b, "FID")["outcome"] == "better" and clear.compare(b, a, "FID")["outcome"] == "worse"
    assert results([100, 110, 120], [115, 116, 117]).compare(a, b, "FID")["outcome"] == "inconclusive"  # 5 < 10 + 1
    assert clear.compare(a, b, "acc")["outcome"] == "better"  # higher is better here; sd 0
    import verdict

    row = verdict.verdict_row("claim", "paper", clear.compare(a, b, "FID"), "A", "B", why="too small")
    assert row["verdict"] == "reproduced" and "A 102.0 +/- 2.0 vs B 120.0 +/- 1.0" in row["ours"]
    assert row["why"] == ""  # a reason only where the claim is not reproduced
    row = verdict.verdict_row("c", "p", clear.compare(b, a, "FID"), "B", "A", why="too small")
    assert row["verdict"] == "not reproduced" and row["why"] == "too small"


def test_mean_and_sd_print_to_the_sd_second_significant_figure(claims):
    pm = claims[0].pm
    assert [pm(3.7, 0.248), pm(126.3, 5.76), pm(159.2, 15.7), pm(0.5712, 0.104)] == \
        ["3.70 +/- 0.25", "126.3 +/- 5.8", "159 +/- 16", "0.57 +/- 0.10"]
    assert pm(19.9, 0.0) == "19.9 +/- 0" and pm(float("nan"), 0.0) == "-"
    assert pm(0.6653, 0.0058, percent=True) == "66.53% +/- 0.58%" and pm(0.807, 0.038, True) == "80.7% +/- 3.8%"


def test_accuracies_show_as_percentages_in_tables_and_verdicts(claims):
    common, _ = claims
    a, b = common.Row("linear", "A"), common.Row("chameleon", "B")
    metrics = {"colour": (common.t2i("colour"), False), "ppl": (lambda r: r["ppl"], True)}
    reports = {a: {1e13: [{"t2i": {"accuracy": {"colour": x}}, "ppl": 10.0} for x in (0.8, 0.9, 1.0)]},
               b: {1e13: [{"t2i": {"accuracy": {"colour": x}}, "ppl": 12.0} for x in (0.3, 0.3, 0.3)]}}
    results = common.Results([a, b], (1e13,), reports, metrics)
    import verdict

    row, = verdict.verdicts(results, a, b, ("A", "B"), [("claim", "paper", "colour")])
    assert "A 90% +/- 10% vs B 30% +/- 0" in row["ours"] and row["verdict"] == "reproduced"
    assert results.shown(a, 1e13, "colour") == "90% +/- 10%" and results.shown(b, 1e13, "ppl") == "12 +/- 0"
    row, = verdict.verdicts(results, a, b, ("A", "B"), [("claim", "paper", "ppl", "text is shorter")])
    assert "%" not in row["ours"] and row["why"] == ""  # lower perplexity: reproduced
    row, = verdict.verdicts(results, b, a, ("B", "A"), [("claim", "paper", "ppl", "text is shorter")])
    assert row["verdict"] == "not reproduced" and row["why"] == "text is shorter"


def test_the_parity_flop_ratio_interpolates_on_log_flops(claims):
    _, scaling = claims
    point = lambda flops, value: {"flops": flops, "report": {"v": value}}  # noqa: E731
    score = lambda r: r["v"]  # noqa: E731
    chameleon = [point(1e13, 100), point(4e13, 80)]  # its best: 80 at 4e13
    p = scaling.parity([point(1e12, 120), point(1e13, 60)], chameleon, score, lower=True)
    assert p["target"] == 80 and p["chameleon_flops"] == 4e13
    assert p["reached"] == pytest.approx(10 ** (12 + 2 / 3)) and not p["bound"]  # 2/3 of the way from 120 to 60
    first = scaling.parity([point(1e12, 70), point(1e13, 60)], chameleon, score, lower=True)
    assert first["reached"] == 1e12 and first["bound"]  # already better at its first point: a bound
    assert scaling.parity([point(1e12, 90), point(1e13, 95)], chameleon, score, lower=True)["reached"] is None
    # higher is better; a worse later point does not undo the best so far
    up = scaling.parity([point(1e12, 0.2), point(1e13, 0.6), point(1e14, 0.1)], [point(1e13, 0.4)], score, lower=False)
    assert up["reached"] == pytest.approx(10 ** 12.5)
    assert scaling.show("t2i colour", 0.875) == "87.5%" and scaling.show("FID 256", 108.46) == "108"


def test_each_real_image_arm_trains_on_its_dataset_with_its_own_autoencoders(claims):
    common, _ = claims
    assert [common.dataset_of(a) for a in ("linear", "chameleon_L", "mnist_linear", "emoji_chameleon")] == [
        "shapes", "shapes", "mnist", "emoji"]
    for data in ("mnist", "emoji"):
        linear, chameleon = (common.overrides(f"{data}_{arm}", 0) for arm in ("linear", "chameleon"))
        # the last autoencoder.name override wins: the dataset's KL for Transfusion, its VQ for Chameleon
        last = [[o for o in arm if o.startswith("autoencoder.name=")][-1] for arm in (linear, chameleon)]
        assert last == [f"autoencoder.name={common.ae_dir(kind, data)}" for kind in ("kl", "vq")]
        assert f"data.dataset={common.DATASETS[data]}" in linear and "image.objective=tokens" in chameleon
    assert "{split}" in common.DATASETS["emoji"]  # a folder with train/ and test/, as load_dataset reads it


@pytest.mark.slow
def test_claim_script_trains_at_equal_flops_and_writes_table_and_plot(tmp_path):
    env = {**os.environ, "CLAIMS_SMOKE": "1", "CLAIMS_RUNS": str(tmp_path)}
    script = ROOT / "experiments" / "paper_claims" / "d_noise_capping.py"
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "docs" / "d_noise_capping.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 2e+11") or line.startswith("| 4e+11")]
    assert len(rows) == 4, table  # two arms at two budgets
    cells = [row.split(" | ") for row in rows]
    assert {c[2] for c in cells[:2]} == {"4"} and {c[2] for c in cells[2:]} == {"8"}  # same N: same steps
    assert all(" +/- " in c for row in cells for c in row[4:]) and "over 2 training seeds" in table
    assert len(list(tmp_path.glob("transfusion_s[01]_4e+11/report.json"))) == 2  # one run per seed
    assert "data.mix_by=tokens data.text_fraction=0.5" in result.stdout  # the protocol, for every arm
    (verdict,) = json.loads((tmp_path / "docs" / "verdicts" / "d_noise_capping.json").read_text())
    assert verdict["verdict"] in ("reproduced", "not reproduced", "inconclusive") and "CIDEr-D" in verdict["ours"]
    assert (tmp_path / "docs" / "d_noise_capping.png").stat().st_size > 5000
    assert "$ transfusion train --preset tiny" in result.stdout  # the commands are shown as typed
    # a fresh checkout holds the scores but not the runs: the table rebuilds without training anything
    for path in tmp_path.iterdir():
        if path.name not in ("scores", "docs"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "$ transfusion" not in again.stdout and (tmp_path / "docs" / "d_noise_capping.md").read_text() == table
    commands = [json.loads(line) for line in (tmp_path / "scores" / "commands.jsonl").read_text().splitlines()]
    assert len(commands) > 8 and all(c["seconds"] >= 0 for c in commands)  # the wall clock of each, for the total


def test_the_sampler_sweep_scores_each_setting_against_ddpm_250_and_plots(debug_run, tmp_path):
    script = ROOT / "experiments" / "samplers.py"
    args = [sys.executable, str(script), "--run", str(debug_run), "--n", "6", "--only", "dpm++ 25", "--docs", str(tmp_path)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "sampling_sweep.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| ddpm 250 |", "| dpm++ 25 |"))]
    assert len(rows) == 2 and rows[0].split(" | ")[-2] == "1.00"  # the reference's time ratio
    assert "| captions scored | 6 | 6 |" in table  # colour and shape are named by every caption
    assert (tmp_path / "sampling" / "quality_vs_time.png").stat().st_size > 5000
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)  # cached: nothing sampled again
    assert again.returncode == 0 and "$ transfusion eval" not in again.stdout


def test_at_least_matches_is_judged_by_a_margin_stated_in_advance(claims):
    import verdict

    def c(ma, sa, mb, sb, lower=True):
        return {"a": (ma, sa), "b": (mb, sb), "lower": lower, "metric": "FID", "budget": 1e14}

    # B at 100: the 5% margin allows A up to 105
    assert verdict.judged(c(102, 1, 100, 1), at_least_matches=True) == "reproduced (within the 5% margin)"  # 104
    assert verdict.judged(c(104, 1, 100, 1), at_least_matches=True) == "inconclusive"  # worse end 106 > 105
    assert verdict.judged(c(110, 1, 100, 1), at_least_matches=True) == "not reproduced (beyond the 5% margin)"
    assert verdict.judged(c(90, 5, 100, 5), at_least_matches=True).startswith("reproduced")  # better: reproduced
    # superiority stays strict: within the spread is inconclusive, never reproduced
    assert verdict.judged(c(98, 2, 100, 2)) == "inconclusive" and verdict.judged(c(90, 2, 100, 2)) == "reproduced"
    assert verdict.judged(c(0.9, 0.01, 0.8, 0.01, lower=False)) == "reproduced"


def test_a_claim_over_attributes_names_the_ones_that_go_each_way(claims):
    common, _ = claims
    import verdict

    a, b = common.Row("linear", "A"), common.Row("chameleon", "B")
    values = {"colour": ((0.9, 0.9, 0.9), (0.5, 0.5, 0.5)), "shape": ((0.3, 0.3, 0.3), (0.6, 0.6, 0.6)),
              "size": ((0.5, 0.6, 0.7), (0.6, 0.6, 0.6))}
    metrics = {name: (common.t2i(name), False) for name in values}
    reports = {row: {1e13: [{"t2i": {"accuracy": {k: v[i][seed] for k, v in values.items()}}} for seed in range(3)]}
               for i, row in enumerate((a, b))}
    row = verdict.attributes_row(common.Results([a, b], (1e13,), reports, metrics), a, b, ("A", "B"), "claim", "paper",
                                 list(values), why="not tested")
    assert row["verdict"] == "mixed" and row["why"] == "not tested"
    assert "A ahead beyond the spread: colour; B ahead: shape; within the spread: size" in row["ours"]


def test_round_three_keeps_its_autoencoders_and_refuses_another(claims, tmp_path, monkeypatch):
    import round3_runs

    monkeypatch.setattr(round3_runs, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(round3_runs, "STORE", tmp_path / "store")
    for kind in ("kl", "vq"):  # as if trained: the round's folders
        folder = tmp_path / "runs" / f"ae_{kind}"
        folder.mkdir(parents=True)
        (folder / "autoencoder.json").write_text("{}")
        (folder / "autoencoder.safetensors").write_bytes(kind.encode())
    first = round3_runs.autoencoders()  # copied into the store
    assert (tmp_path / "store" / "autoencoders" / "vq" / "autoencoder.safetensors").read_bytes() == b"vq"
    shutil.rmtree(tmp_path / "runs")  # a fresh machine: restored from the store, not retrained
    assert round3_runs.autoencoders() == first and (tmp_path / "runs" / "ae_kl" / "autoencoder.json").is_file()
    (tmp_path / "runs" / "ae_kl" / "autoencoder.safetensors").write_bytes(b"retrained")
    with pytest.raises(SystemExit, match="is not the autoencoder the stored scores used"):
        round3_runs.autoencoders()


def test_round_three_sweeps_the_settings_the_review_asked_for(claims):
    import round3_runs

    diffusion, codes = round3_runs.grid("linear"), round3_runs.grid("chameleon")
    assert {(s["cfg"], s["clip"]) for s in diffusion} == {(g, c) for g in (1.5, 2.0, 3.0, 5.0, 7.5) for c in (3.0, 0.0)}
    assert {(s["cfg"], s["image_temperature"], s["top_k"]) for s in codes} == {
        (g, t, k) for g in (1.5, 2.0, 3.0, 5.0, 7.5) for t in (0.8, 1.0) for k in (0, 64)}
    assert round3_runs.eval_flags({"cfg": 3.0, "top_k": 64, "image_temperature": 0.8}) == [
        "--cfg", "3.0", "--image-temperature", "0.8", "--top-k", "64"]
    assert round3_runs.shared("linear") == {"sampler": "ddpm", "steps": 250, "cfg": 5.0, "clip": 3.0}
    assert "train.ema_warmup=true" in round3_runs.overrides("chameleon", 1) and "train.seed=1" in round3_runs.overrides("chameleon", 1)


def test_round_three_tables_from_a_partial_store_run_nothing(claims, tmp_path, monkeypatch):
    """``round3.py --table`` while the round is under way: what the store holds is shown, the
    rest is marked "not yet measured", and no command (training or eval) is started."""
    common, _ = claims
    import round3
    import round3_runs

    for name in ("RUNS", "STORE"):
        monkeypatch.setattr(round3_runs, name, tmp_path / name.lower())
    monkeypatch.setattr(round3, "DOCS", tmp_path / "docs")
    monkeypatch.setattr(round3_runs, "STORE_ONLY", True)
    monkeypatch.setattr(common, "sh", lambda *a, **k: pytest.fail(f"ran {a}"))
    store = tmp_path / "store"
    for kind in ("kl", "vq"):  # the round's autoencoders, kept
        (store / "autoencoders" / kind).mkdir(parents=True)
        (store / "autoencoders" / kind / "autoencoder.json").write_text("{}")
        (store / "autoencoders" / kind / "autoencoder.safetensors").write_bytes(kind.encode())
    accuracy = {a: 0.5 for a in round3.ATTRIBUTES}
    for arm in round3.A_ARMS:  # seed 0 planned, tuned and its floor scored; nothing else
        run = f"{arm}_s0_1e+14"
        common._write(store / run / "plan.json", {"25000000000000.0": 10, "100000000000000.0": 40})
        rows = [{"settings": s, "fid": 100.0 + i, "accuracy": accuracy} for i, s in enumerate(round3_runs.grid(arm))]
        common._write(store / "tuning" / f"{arm}.json", {"arm": arm, "run": run, "step": 40, "split": "validation",
                                                         "n": 256, "rows": rows, "best": rows[0]["settings"]})
        common._write(store / run / "step40_floor_test_n1000.json",
                      {"floor": {"fid": 40.0, "fid_256": 50.0, "mse": 0.004, "settings": {"samples": 1000}}})
    text = round3.table_a()
    assert text.count("not yet measured") == 4  # tuned and shared, each arm
    assert "its autoencoder's floor | reconstructions (MSE 0.0040) | - | 40.0 | 50.0" in text
    assert (tmp_path / "docs" / "a_tuning.png").is_file() and "not yet sampled" in text
    assert round3.table_b().count("not yet measured") == 4
    assert round3.verdict_rows() == []  # no line until both arms' seeds are scored


def test_round_three_from_its_store_alone_runs_nothing(claims, tmp_path, monkeypatch):
    """A fresh checkout holds round three's store but none of its runs: the whole round (not only
    ``--table``) rebuilds its tables and verdict lines from the store without starting a command."""
    common, _ = claims
    import round3
    import round3_runs
    import verdict

    monkeypatch.setattr(round3_runs, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(round3, "DOCS", tmp_path / "docs")
    monkeypatch.setattr(verdict, "DOCS", tmp_path / "verdicts")
    monkeypatch.setattr(common, "sh", lambda *a, **k: pytest.fail(f"ran {a}"))
    round3.claim()
    rows = json.loads((tmp_path / "verdicts" / "verdicts" / "round3.json").read_text())
    assert [r["claim"][:3] for r in rows] == ["(a)", "(a)", "(b)", "(b)"]
    stored = (ROOT / "docs" / "results" / "round3" / "b_intra_image_attention.md").read_text()
    assert (tmp_path / "docs" / "b_intra_image_attention.md").read_text() == stored


@pytest.mark.slow
def test_the_posttraining_experiment_runs_every_step_and_writes_its_page(tmp_path):
    """experiments/posttraining.py with every step shrunk (POSTTRAIN_QUICK=1, the debug preset):
    start, editing fine-tune, the post-training runs, the evaluations, the page and its figures;
    the groups that teach; a second run finds everything done and starts no command."""
    env = {**os.environ, "POSTTRAIN_QUICK": "1", "POSTTRAIN_PRESET": "debug", "POSTTRAIN_RUNS": str(tmp_path / "runs"),
           "POSTTRAIN_DOCS": str(tmp_path / "docs")}
    script = ROOT / "experiments" / "posttraining.py"
    first = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    page = (tmp_path / "docs" / "posttraining.md").read_text()
    assert "### Shapes reward on `small`" in page and "| after GRPO, edit reward |" in page and "count >= 70%" in page
    assert "| after GRPO, shapes_strict reward |" in page
    assert "### Count and relation captions only" in page and "| after GRPO on count and relation captions" in page
    assert "### What count and relation captions fail on" in page and "| relation captions |" in page
    assert (tmp_path / "runs" / "results" / "failures" / "debug_grpo_focus" / "posttraining_failures_cfg3.json").is_file()
    assert "### Where the signal is" in page and "| the reward |" in page  # the groups that teach, start and after
    assert (tmp_path / "runs" / "results" / "signal" / "debug_grpo_strict" / "posttraining_groups.json").is_file()
    for name in ("shapes_curves", "shapes_before", "shapes_after", "shapes_settings", "shapes_strict_curves",
                 "shapes_strict_after", "shapes_strict_settings", "shapes_focus_curves", "edits_curves", "edits_before",
                 "edits_after", "edits_settings"):
        assert (tmp_path / "docs" / "posttraining" / f"{name}.png").is_file()
    again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "$ " not in again.stdout
