"""Every claim of the second and third rounds in one go, then the verdict table at the top of docs/results.md.

    python experiments/paper_claims/run_all.py
    python experiments/paper_claims/run_all.py --verdicts   # only the table, from the claims finished so far

Every score is kept in experiments/paper_claims/scores/ (committed: a fresh checkout rebuilds
every table from it), the runs themselves under runs/claims2/: a rerun trains and scores only
what the store lacks, an interrupted one resumes (a training run from its last checkpoint).
The wall clock of every finished command is logged in experiments/paper_claims/scores/commands.jsonl;
the verdict section states their sum.
"""

import json
import time

import a_real_images
import a_scaling
import a_transfusion_vs_chameleon
import b_intra_image_attention
import c_linear_vs_unet
import check_mix
import d_noise_capping
import e_flow_vs_ddpm
import f_mot_vs_dense
import g_lmfusion
import h_interleaved
import round3
import round3_runs
from common import DOCS, SMOKE, STORE, main

# in order of importance: the headline comparison first, so an interrupted run has it
CLAIMS = (a_transfusion_vs_chameleon, round3, h_interleaved, b_intra_image_attention, c_linear_vs_unet, a_scaling,
          d_noise_capping, e_flow_vs_ddpm, f_mot_vs_dense, g_lmfusion, a_real_images)
START, END = "<!-- verdict table: written by experiments/paper_claims/run_all.py -->", "<!-- end of the verdict table -->"


def verdict_table() -> str:
    rows = []
    for module in CLAIMS:
        path = DOCS / "verdicts" / f"{module.__name__}.json"
        if path.is_file():
            rows += json.loads(path.read_text())
    log = STORE / "commands.jsonl"
    seconds = sum(json.loads(line)["seconds"] for line in log.read_text().splitlines()) if log.is_file() else 0
    lines = [START, "", "| claim | paper | ours (mean +/- sd over seeds, largest budget) | verdict | why, where not reproduced |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['paper']} | {r['ours']} | **{r['verdict']}** | {r.get('why', '')} |" for r in rows]
    lines += ["", "A claim that A beats B is reproduced only when A is better by more than the spread (the sum of "
              "the two standard deviations over seeds), not reproduced when worse by more, else *inconclusive*. A "
              "claim that A at least matches B is reproduced when even the worse end of the spread keeps A within 5% "
              "of B, not reproduced when A falls short by more than 5% at the better end, else *inconclusive*. A "
              "claim over several attributes names those that go each way (*mixed* when both). Wall clock of every "
              f"command in the store so far: {seconds / 3600:.1f} hours on 2 CPU cores for round two "
              "(experiments/paper_claims/scores/commands.jsonl), "
              f"{round3_runs.hours():.1f} hours for round three (experiments/paper_claims/scores3/commands.jsonl).", "", END]
    return "\n".join(lines)


def write_verdicts() -> None:
    table = verdict_table()
    (DOCS / "verdict.md").write_text(table + "\n")
    results = DOCS.parent / "results.md"  # docs/results.md beside the tables
    if not SMOKE and results.is_file() and START in results.read_text():
        text = results.read_text()
        head, rest = text.split(START, 1)
        results.write_text(head + table + rest.split(END, 1)[1])
    print(table)


def claim():
    start = time.time()
    if not (DOCS / "mix_check.md").is_file():  # a few minutes; delete the file to measure again
        check_mix.main()
    for module in CLAIMS:
        module.claim()
        print(f"[{(time.time() - start) / 60:.1f} min] {module.__name__} done", flush=True)
    write_verdicts()


if __name__ == "__main__":
    import sys

    main(write_verdicts if sys.argv[1:] == ["--verdicts"] else claim)
