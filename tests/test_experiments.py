"""The paper-claim harness runs end to end (a minutes-long smoke version of claim (d))."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    assert (tmp_path / "docs" / "d_noise_capping.png").stat().st_size > 5000
    assert "$ transfusion train --preset tiny" in result.stdout  # the commands are shown as typed


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
