"""The claims' third round: each arm tuned on a validation split, sampled from the EMA of its
weights, scored against its autoencoder's floor, with autoencoders fixed per round.

    python experiments/paper_claims/round3.py            # (a) then (b): train, tune, test, tables, verdicts
    python experiments/paper_claims/round3.py --table    # only the tables and verdict lines, from the store

Round two compared Transfusion and Chameleon at one shared guidance (5), without an EMA of the
weights and with the autoencoders' own limits unmeasured. This round, for the arms it revisits:

- **Protocol**: round two's (the ``tiny`` preset, text and image-caption data 1:1 by tokens,
  three training seeds, equal training FLOPs), plus an EMA of the weights
  (``train.ema_decay=0.999 train.ema_warmup=true``: at step t the decay is
  min(0.999, (1 + t) / (10 + t)), an average of about the last tenth of the run); every score
  samples from the EMA (``transfusion eval --ema``).
- **Autoencoders**: the KL and the VQ autoencoder train for the same 1,500 steps. Both are
  copied into the store the first time (``scores3/autoencoders/``) and restored from it, and a
  score records the sha256 of the autoencoder it used: a table refuses to mix two.
- **Floors**: ``transfusion eval --suite floor`` (each autoencoder's reconstructions of the
  same 1,000 held-out test images the arms' FID uses) gives the best FID an arm could reach.
- **Tuning**: at its largest budget, seed 0, each arm's sampling settings are swept on 256
  documents of the shapes *validation* split (never the test documents), by FID: guidance
  {1.5, 2, 3, 5, 7.5} for both; for Transfusion the x0 clamp on (3) or off and DPM-Solver++ 25
  steps against DDPM 250 at the best of those; for Chameleon temperature {0.8, 1.0} and
  top-k {off, 64}. Each arm is then scored on the test split at its own best settings (the
  headline, as the paper tuned its own arm) and at the shared guidance 5 of round two.
- **(b) where it can show**: bidirectional against causal attention within an image at the
  paper's ablation guidance (3), with 16 patches per image (linear 2x2 on 8x8 latents) and 64
  (linear 1x1), three seeds each.

Every score and record is kept in ``experiments/paper_claims/scores3/`` (a fresh clone
rebuilds the tables without training), the runs under ``runs/claims3/``; a rerun trains and
scores only what the store lacks, and an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import round3_runs as runs
from common import LONG, ROOT, SEEDS, SMOKE, T2I_N, pm
from round3_runs import (ATTRIBUTES, FAST_STEPS, NotInStore, autoencoders, collect, floor, mean_sd, setting_name,
                         shared, train, tuned)

DOCS = Path(os.environ.get("CLAIMS_DOCS", runs.RUNS / "docs" if SMOKE else ROOT / "docs" / "results" / "round3"))


# ---------------------------------------------------------------- (a) images, tuned and shared
A_ARMS = ("linear", "chameleon")
LABEL = {"linear": "Transfusion (linear 2x2)", "chameleon": "Chameleon (VQ codes)"}


def claim_a() -> None:
    """Train both arms (seed 0 first, then tune, then the other seeds), score on the test split."""
    autoencoders()
    for arm in A_ARMS:  # both seed-0 runs before the first sweep; a stored sweep needs neither
        if not (runs.STORE / "tuning" / f"{arm}.json").is_file():
            train(arm, 0).trained()
    best = {arm: tuned(arm)["best"] for arm in A_ARMS}
    for arm in A_ARMS:
        floor(arm)
    for seed in SEEDS:
        for arm in A_ARMS:
            run = train(arm, seed)
            top = run.plan[max(run.plan)]
            for budget, step in sorted(run.plan.items()):
                run.score(step, "text", 8 if SMOKE else 256)
                run.score(step, "i2t", 8 if SMOKE else 256)
                run.score(step, "t2i", T2I_N if step == top else (8 if SMOKE else 256), best[arm])
            run.score(top, "t2i", T2I_N, shared(arm))
    table_a()


def table_a() -> str:
    """The (a) table: each arm tuned and at the shared guidance, the floors, the tuning sweeps."""
    best = {arm: json.loads((runs.STORE / "tuning" / f"{arm}.json").read_text()) for arm in A_ARMS}
    lines = ["### (a) Transfusion vs Chameleon, third round: tuned on validation, EMA, floors", ""]
    header = ["arm", "settings", "budget", "FID", "FID 256", *[f"t2i {a}" for a in ATTRIBUTES], "text ppl",
              "caption colour", "caption CIDEr-D"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    hashes = set()
    for arm in A_ARMS:
        for how, settings_of in (("tuned", lambda a, top: best[a]["best"]),
                                 ("shared", lambda a, top: shared(a) if top else None)):
            try:
                per_budget = collect(arm, settings_of)
            except NotInStore:
                lines.append("| " + " | ".join([LABEL[arm], f"{how}: {setting_name(settings_of(arm, True))}",
                                                "not yet measured"] + ["-"] * (len(header) - 3)) + " |")
                continue
            for budget, reports in sorted(per_budget.items()):
                hashes |= {(arm, r["sha"]) for r in reports}
                t2i_fid = [r["t2i"]["fid"] for r in reports]
                fid_256 = [r["t2i"].get("fid_256", r["t2i"]["fid"]) for r in reports]
                cells = [LABEL[arm], f"{how}: {setting_name(settings_of(arm, True))}", f"{budget:.2g}",
                         pm(*mean_sd(t2i_fid)) if reports[0]["t2i"]["settings"]["samples"] == T2I_N else "-",
                         pm(*mean_sd(fid_256))]
                cells += [pm(*mean_sd([r["t2i"]["accuracy"][a] for r in reports]), True) for a in ATTRIBUTES]
                cells += [pm(*mean_sd([r["text"]["english"]["perplexity"] for r in reports])),
                          pm(*mean_sd([r["i2t"]["accuracy"]["colour"] for r in reports]), True),
                          pm(*mean_sd([r["i2t"]["cider_d"] for r in reports]))]
                lines.append("| " + " | ".join(cells) + " |")
        f = floor(arm)["floor"]
        cells = [f"{LABEL[arm]}: its autoencoder's floor", f"reconstructions (MSE {f['mse']:.4f})", "-",
                 f"{f['fid']:.1f}", f"{f.get('fid_256', f['fid']):.1f}"]
        lines.append("| " + " | ".join(cells + ["-"] * (len(header) - len(cells))) + " |")
    kinds = {}
    for arm, sha in hashes:
        kinds.setdefault(arm, set()).add(sha)
    mixed = [arm for arm, shas in kinds.items() if len(shas) > 1]
    if mixed:
        raise SystemExit(f"scores of {', '.join(mixed)} were made with different autoencoders; refusing to mix them")
    lines += ["", f"Mean +/- standard deviation over {len(SEEDS)} training seeds, sampled from the EMA of the "
              f"weights. FID on {T2I_N} held-out test captions at the largest budget, on 256 below it. "
              "Tuned: the arm's best validation-split setting (below); shared: round two's guidance 5.", ""]
    for arm in A_ARMS:
        t = best[arm]
        lines += [f"Tuning of {LABEL[arm]} ({t['run']}, step {t['step']}, {t['n']} validation documents):", "",
                  "| settings | validation FID | colour | exact | clamp fired (share of x0 values / of steps) |",
                  "|---|---|---|---|---|"]
        for row in sorted(t["rows"], key=lambda r: r["fid"]):
            clamp = row.get("clamp")
            fired = f"{100 * clamp['x0_values_clamped']:.2f}% / {100 * clamp['steps_clamped']:.0f}%" if clamp else "-"
            lines.append(f"| {setting_name(row['settings'])} | {row['fid']:.1f} | "
                         f"{100 * row['accuracy']['colour']:.0f}% | {100 * row['accuracy']['exact']:.0f}% | {fired} |")
        lines.append("")
    lines += ["![validation FID and exact matches against guidance, each arm's settings](a_tuning.png)", "",
              "Test-caption samples of seed 0 at the largest budget, tuned (left) and shared guidance 5 (right):", ""]
    for arm in A_ARMS:
        grids = [grid_copy(arm, settings) for settings in (best[arm]["best"], shared(arm))]
        shown = [f"![{LABEL[arm]}, {how}]({name})" for name, how in zip(grids, ("tuned", "shared guidance 5")) if name]
        lines.append(f"{LABEL[arm]}: " + (" ".join(shown) if shown else "not yet sampled"))
    lines.append("")
    text = "\n".join(lines)
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "a_transfusion_vs_chameleon.md").write_text(text + "\n")
    plot_tuning(best, {arm: floor(arm)["floor"] for arm in A_ARMS})
    print(text)
    return text


def grid_copy(arm: str, settings: dict) -> str | None:
    """The t2i sample grid of seed 0 at the largest budget with ``settings``, copied beside the
    tables (kept there once made: the grid is not in the store); its file name, or None."""
    run = train(arm, 0)
    step = run.plan[max(run.plan)]
    name = f"a_{arm}_{setting_name(settings)}.png"
    made = run.folder / "eval" / f"step{step}_t2i_test_n{T2I_N}_{setting_name(settings)}_t2i.png"
    if made.is_file():
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy2(made, DOCS / name)
    return name if (DOCS / name).is_file() else None


def plot_tuning(best: dict, floors: dict) -> None:
    """Validation FID (top) and exact matches (bottom) against guidance, one line per other
    setting, each arm's autoencoder floor dashed (its FID on as many test images as the sweep
    used: FID rises as N falls): ``a_tuning.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(A_ARMS), figsize=(5.2 * len(A_ARMS), 6.4), sharex=True)
    for col, arm in enumerate(A_ARMS):
        lines: dict = {}
        for row in best[arm]["rows"]:
            rest = {k: v for k, v in row["settings"].items() if k != "cfg"}
            lines.setdefault(setting_name(rest), []).append(row)
        for name, rows in sorted(lines.items()):
            rows.sort(key=lambda r: r["settings"]["cfg"])
            xs = [r["settings"]["cfg"] for r in rows]
            style = dict(marker="o", label=name, linestyle="-" if len(rows) > 1 else "none")
            axes[0, col].plot(xs, [r["fid"] for r in rows], **style)
            axes[1, col].plot(xs, [100 * r["accuracy"]["exact"] for r in rows], **style)
        on_256 = best[arm]["n"] == 256 and "fid_256" in floors[arm]
        level = floors[arm]["fid_256"] if on_256 else floors[arm]["fid"]
        axes[0, col].axhline(level, color="grey", linestyle="--",
                             label=f"autoencoder floor ({256 if on_256 else floors[arm]['settings']['samples']} test images)")
        axes[0, col].set_yscale("log")
        axes[0, col].set_title(f"{LABEL[arm]}: validation FID (lower is better)", fontsize=9)
        axes[1, col].set_title("exact matches, % (higher is better)", fontsize=9)
        axes[1, col].set_xlabel("guidance")
        axes[0, col].legend(fontsize=7)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    fig.suptitle(f"Sampling sweeps on {best[A_ARMS[0]]['n']} validation documents (seed 0, largest budget, EMA)", fontsize=10)
    fig.tight_layout()
    fig.savefig(DOCS / "a_tuning.png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- (b) intra-image attention, where it can show
B_PAIRS = (("linear", "linear_causal", "16 patches (linear 2x2)"), ("linear_p1", "linear_p1_causal", "64 patches (linear 1x1)"))
B_SETTINGS = {"sampler": "dpm++", "steps": FAST_STEPS, "cfg": 3.0, "clip": 3.0}  # the paper's ablation guidance


def claim_b() -> None:
    for seed in SEEDS:
        for pair in B_PAIRS:
            for arm in pair[:2]:
                run = train(arm, seed)
                run.score(run.plan[max(run.plan)], "t2i", T2I_N, B_SETTINGS)
    table_b()


def stats_b(arm: str, partial: bool = False) -> dict:
    """{metric: (mean, sd)} of ``arm``'s t2i at its largest budget with ``B_SETTINGS``, over seeds;
    with ``partial`` (``--table`` while the round is under way), over the seeds scored so far."""
    reports = []
    for seed in SEEDS:
        try:
            run = train(arm, seed)
            reports.append(run.score(run.plan[max(run.plan)], "t2i", T2I_N, B_SETTINGS)["t2i"])
        except NotInStore:
            if not partial:
                raise
    if not reports:
        raise NotInStore(arm)
    out = {"seeds": len(reports), "FID": mean_sd([r["fid"] for r in reports])}
    out.update({a: mean_sd([r["accuracy"][a] for r in reports]) for a in ATTRIBUTES})
    return out


def table_b() -> str:
    header = ["patches per image", "attention", "FID", *[f"t2i {a}" for a in ATTRIBUTES]]
    lines = ["### (b) Bidirectional vs causal attention within an image, third round (guidance 3, EMA)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for bidirectional, causal, label in B_PAIRS:
        for arm, how in ((bidirectional, "bidirectional"), (causal, "causal")):
            try:
                st = stats_b(arm, partial=True)
            except NotInStore:
                lines.append("| " + " | ".join([label, how, "not yet measured"] + ["-"] * len(ATTRIBUTES)) + " |")
                continue
            seeds = "" if st["seeds"] == len(SEEDS) else f" ({st['seeds']} of {len(SEEDS)} seeds so far)"
            one = st["seeds"] == 1  # no spread to show yet
            fmt = (lambda m, s, percent=False: pm(m, s, percent).split(" +/-")[0]) if one else pm  # noqa: E731
            cells = [label, how, fmt(*st["FID"]) + seeds, *[fmt(*st[a], True) for a in ATTRIBUTES]]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Mean +/- standard deviation over {len(SEEDS)} training seeds at {max(LONG):.2g} training FLOPs, sampled from "
              f"the EMA: {setting_name(B_SETTINGS)}, FID on {T2I_N} held-out test captions.", ""]
    text = "\n".join(lines)
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "b_intra_image_attention.md").write_text(text + "\n")
    print(text)
    return text


# ---------------------------------------------------------------- verdicts
def compared(a: tuple[float, float], b: tuple[float, float], metric: str, lower: bool, budget: float,
             share: bool = False) -> dict:
    return {"a": a, "b": b, "metric": metric, "lower": lower, "budget": budget, "share": share}


def top_stats(arm: str, settings: dict, metric) -> tuple[float, float]:
    values = []
    for seed in SEEDS:
        run = train(arm, seed)
        values.append(metric(run.score(run.plan[max(run.plan)], "t2i", T2I_N, settings)["t2i"]))
    return mean_sd(values)


def verdict_rows() -> list[dict]:
    """The round's lines of the verdict table: (a) images tuned and shared side by side, (b) at 16 and 64 patches."""
    from verdict import verdict_row

    rows = []
    best = {arm: json.loads((runs.STORE / "tuning" / f"{arm}.json").read_text()) for arm in A_ARMS}
    floors = {arm: floor(arm)["floor"]["fid"] for arm in A_ARMS}
    fid = lambda r: r["fid"]  # noqa: E731
    budget = max(LONG)
    for how, settings_of in (("each tuned on validation", lambda a: best[a]["best"]), ("shared guidance 5", shared)):
        try:
            c = compared(top_stats("linear", settings_of("linear"), fid), top_stats("chameleon", settings_of("chameleon"), fid),
                         "FID", True, budget)
        except NotInStore:
            continue
        clamp = top_stats("linear", settings_of("linear"), lambda r: r.get("clamp", {}).get("steps_clamped", 0.0))[0]
        unclamped = min(r["fid"] for r in best["linear"]["rows"] if r["settings"].get("clip") == 0)
        measured = (f"measured: FID above its autoencoder's floor (reconstructions of the same test images): "
                    f"Transfusion {c['a'][0] - floors['linear']:.1f} (KL floor {floors['linear']:.1f}), Chameleon "
                    f"{c['b'][0] - floors['chameleon']:.1f} (VQ floor {floors['chameleon']:.1f}); Transfusion's x0 "
                    f"clamp fired on {100 * clamp:.0f}% of its sampling steps, and without it validation FID is "
                    f"{unclamped:.0f} or worse; settings Transfusion {setting_name(settings_of('linear'))}, "
                    f"Chameleon {setting_name(settings_of('chameleon'))}")
        row = verdict_row(f"(a) images, round 3 ({how}, EMA): Transfusion beats Chameleon",
                          "FID 16.8 vs 29.6 (7B, Table 3)", c, "Transfusion", "Chameleon", why=measured)
        row["why"] = measured  # what decides it, whatever the outcome
        rows.append(row)
    for bidirectional, causal, label in B_PAIRS:
        try:
            bi, ca = stats_b(bidirectional), stats_b(causal)
        except NotInStore:
            continue
        c = compared(bi["FID"], ca["FID"], "FID", True, budget)
        rows.append(verdict_row(f"(b) bidirectional beats causal within an image, round 3 ({label}, guidance 3, EMA)",
                                "FID 20.3 vs 61.3 (0.76B, linear 2x2)", c, "bidirectional", "causal",
                                why=attributes_measured(bi, ca)))
    return rows


def attributes_measured(bidirectional: dict, causal: dict) -> str:
    """(b)'s reason column: which prompt attributes each arm leads beyond the spread; the cause is not tested."""
    from verdict import by_outcome

    bi_ahead, ca_ahead, _ = by_outcome({a: compared(bidirectional[a], causal[a], a, False, max(LONG)) for a in ATTRIBUTES})
    return (f"measured: prompt attributes beyond the spread, causal ahead on {', '.join(ca_ahead) or 'none'}, "
            f"bidirectional on {', '.join(bi_ahead) or 'none'}; why is not tested")


def claim() -> None:
    """Everything of the round, in order of importance; then its tables and verdict lines."""
    from verdict import save_verdicts

    claim_a()
    claim_b()
    save_verdicts("round3", verdict_rows())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", action="store_true", help="only the tables and verdict lines, from the store")
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.table:
        from verdict import save_verdicts

        runs.STORE_ONLY = True
        table_a()
        table_b()
        save_verdicts("round3", verdict_rows())
    else:
        claim()


if __name__ == "__main__":
    main()
