"""Post-training, measured: GRPO with exact rewards on `small` (the shapes reader) and on its
editing fine-tune (the edit reader), with what the reward does not see checked before and after.

    python experiments/posttraining.py            # reruns skip finished work; an interrupted run resumes

1. ``runs/small`` and its editing fine-tune ``runs/small_edit_ref`` (``experiments/editing.py``
   trains both; this script trains whichever is missing the same way);
2. ``transfusion posttrain runs/small --out runs/small_grpo --reward shapes ...``, the same with
   ``--reward shapes_strict`` (``runs/small_grpo_strict``) and
   ``transfusion posttrain runs/small_edit_ref --out runs/small_edit_grpo --reward edit ...``
   (the settings are ``SHAPES``, ``SHAPES_STRICT`` and ``EDITS`` below);
3. ``transfusion eval`` of each start and each result with guidance 3, as the runs are used
   (``SAMPLER``): text to image on 1,000 held-out captions (FID and what the reader finds),
   captions (``i2t``) and English perplexity (``text``); held-out edits (``edit``, the 500 test
   triples) for the editing runs; text to image and edits again without guidance
   (``UNGUIDED``), as both runs sample while they train. The held-out captions in other words
   are in each run's ``metrics.jsonl`` (``paraphrased_*``);
4. where GRPO's signal is (``posttraining_readings.groups_drawn``): the strict recipe's first 8
   updates' groups drawn by ``small`` and by the strict run, nothing trained, read attribute by attribute;
5. the strict recipe on count and relation captions only (``SHAPES_FOCUS``, ``runs/small_grpo_focus``),
   evaluated as in 3;
6. what count and relation captions fail on (``posttraining_readings.failures``): how many objects
   each model draws for test count captions, and whether a relation's two named objects are drawn.

Writes docs/posttraining.md's measurements (below its marker line; the shapes section as soon as
it is measured) and docs/posttraining/*.png (curves, and the held-out grids before and after).
Each section, once measured, is kept in ``experiments/posttraining_results/`` (its markdown, and the
evaluations and metrics it was made from), so the page is rewritten without the run folders and a
measured section is never measured again; delete a section's files to measure it again.
``POSTTRAIN_RUNS`` moves the run folders, ``POSTTRAIN_PRESET`` the preset and ``POSTTRAIN_QUICK=1``
shrinks every step (the test runs it so, with its store beside its runs).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pages import write_measurements
from posttraining_readings import FAILURES, failures, groups_drawn


ROOT = Path(__file__).resolve().parents[1]
RUNS = Path(os.environ.get("POSTTRAIN_RUNS", ROOT / "runs"))
PRESET = os.environ.get("POSTTRAIN_PRESET", "small")
QUICK = os.environ.get("POSTTRAIN_QUICK") == "1"
DOCS = Path(os.environ.get("POSTTRAIN_DOCS", ROOT / "docs"))
STORE = RUNS / "results" if QUICK else ROOT / "experiments" / "posttraining_results"
BASE, EDIT_BASE = RUNS / PRESET, RUNS / f"{PRESET}_edit_ref"
EDIT_FINE_TUNE = ["data.edit_fraction=0.6", "train.steps=3000", "optim.lr=1e-3", "optim.warmup_steps=100",
                  "optim.min_lr=1e-4", "train.checkpoint_every=500", "train.sample_every=0", "train.eval_samples=32",
                  "image.edit_reference=true"]  # as experiments/editing.py's "source at the adapter"
COMMON = ["posttrain.sample_steps=20", "train.checkpoint_every=10", "posttrain.eval_every=10"]
# guidance off while sampling, 128 samples an update, lr 1e-4: the held-out reward rose in 30 updates; with
# guidance 3 and 64 samples it did not in 60 updates at lr 3e-5 and fell at 3e-4 (docs/posttraining.md)
SHAPES = ["--reward", "shapes", *COMMON, "posttrain.guidance=1", "posttrain.steps=180", "posttrain.prompts=16",
          "posttrain.group=8", "posttrain.lr=1e-4", "posttrain.kl=0.01"]
# the same recipe with the reward that also counts the objects drawn (SHAPES's run gained objects its captions do not
# ask for: exact fell while count and relation rose), at half its learning rate: at lr 1e-4 the held-out reward
# peaked at update 90 and fell from 100 on (stopped at 118; STRICT_TRIED), at 5e-5 it held to 150
SHAPES_STRICT = ["--reward", "shapes_strict", *COMMON, "posttrain.guidance=1", "posttrain.steps=150",
                 "posttrain.prompts=16", "posttrain.group=8", "posttrain.lr=5e-5", "posttrain.kl=0.01"]
# the strict recipe on count and relation captions only: 82 updates of 16 (1,312 captions) hold as many of them as
# the strict recipe's first 210 updates (1,303 of 3,360), its best update on the validation captions (STRICT_210)
SHAPES_FOCUS = [*(s for s in SHAPES_STRICT if not s.startswith("posttrain.steps=")), "posttrain.steps=82",
                "posttrain.kinds=[count,relation]"]
# the shapes recipe at a fifth of its learning rate, 80 updates of ~40 s (the shapes run's held-out reward rose in
# its first ~50 updates, then held); at lr 1e-4 the edit reward fell from the first update, and guidance 3 while
# sampling (60 updates of ~65 s) ended level with this on the 500 held-out triples (posttraining_tried/)
EDITS = ["--reward", "edit", *COMMON, "posttrain.guidance=1", "posttrain.steps=80", "posttrain.prompts=16",
         "posttrain.group=8", "posttrain.lr=2e-5", "posttrain.kl=0.01"]
SAMPLER = ["--sampler", "ddpm", "--steps", "20", "--cfg", "3"]
UNGUIDED = ["--sampler", "ddpm", "--steps", "20", "--cfg", "1"]  # as both runs sample while they train
N_T2I, N_EDIT = 1000, 500
if QUICK:  # the smoke test: every step, seconds each
    EDIT_FINE_TUNE = ["data.edit_fraction=0.6", "train.steps=2", "train.eval_samples=2", "sampling.steps=2",
                      "image.edit_reference=true"]
    small = ["posttrain.steps=2", "posttrain.prompts=2", "posttrain.group=2", "posttrain.eval_prompts=4",
             "posttrain.sample_steps=4", "posttrain.eval_every=1", "train.checkpoint_every=1"]
    SHAPES, SHAPES_STRICT, EDITS = [*SHAPES, *small], [*SHAPES_STRICT, *small], [*EDITS, *small]
    SHAPES_FOCUS = [*SHAPES_FOCUS, *small]
    SAMPLER, UNGUIDED, N_T2I, N_EDIT = ["--sampler", "ddpm", "--steps", "4", "--cfg", "3"], \
        ["--sampler", "ddpm", "--steps", "4", "--cfg", "1"], 4, 4
# the settings tried before SHAPES and EDITS (their metrics.jsonl, stopped where the page says)
TRIED = ROOT / "experiments" / "posttraining_tried"
SHAPES_TRIED = [("guidance 3, 8 prompts x 8, lr 3e-5", TRIED / "guidance3_lr3e-5.jsonl"),
                ("guidance 3, 8 prompts x 8, lr 3e-4", TRIED / "guidance3_lr3e-4.jsonl")]
STRICT_TRIED = [("guidance 1, 16 prompts x 8, lr 1e-4, 150 updates planned", TRIED / "shapes_strict_lr1e-4.jsonl"),
                ("the same with KL weight 0.04", TRIED / "shapes_strict_lr1e-4_kl0.04.jsonl"),
                ("guidance 3, 16 prompts x 8, lr 5e-5", TRIED / "shapes_strict_guidance3_lr5e-5.jsonl"),
                ("guidance 1, 8 prompts x 16, lr 5e-5", TRIED / "shapes_strict_group16_lr5e-5.jsonl")]
# (its first 90 updates, run again with posttrain.steps=90, were kept before: their evaluations are beside it)
STRICT_210 = [TRIED / f"shapes_strict_lr5e-5_210_eval_cfg{g}.json" for g in (3, 1)]  # evaluated as shapes_evaluated
EDITS_TRIED = [("guidance 1, 16 prompts x 8, lr 1e-4", TRIED / "edits_lr1e-4.jsonl"),
               ("guidance 3, 16 prompts x 8, lr 2e-5", TRIED / "edits_guidance3_lr2e-5.jsonl")]  # evaluations beside
TARGETS = {"count": 0.70, "relation": 0.50, "exact": 0.75}  # the shapes reward's targets (held-out captions)


def sh(args: list) -> float:
    """Run a command from the repository root; its wall clock in seconds."""
    print("$ " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    start = time.time()
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT)
    return time.time() - start


def trained(run: Path, args: list) -> None:
    if not (run / "report.json").is_file():
        sh(["transfusion", "train", "--preset", PRESET, "--out", run, *args,
            *(["train.steps=2", "train.eval_samples=2", "sampling.steps=2"] if QUICK and not args else [])])


def setting(settings: list, name: str) -> str:
    """The value ``settings`` give ``posttrain.<name>`` (the last one given, as the command reads them)."""
    return [s.split("=", 1)[1] for s in settings if s.startswith(f"posttrain.{name}=")][-1]


def posttrained(start: Path, out: Path, settings: list) -> None:
    steps = int(setting(settings, "steps"))
    if not (out / "checkpoints" / f"step_{steps:06d}").is_dir():
        sh(["transfusion", "posttrain", start, "--out", out, *settings])


def evaluate(run: Path, name: str, suites: list[str], n: int, sampler: list = SAMPLER) -> dict:
    out = run / "eval" / f"posttraining_{name}.json"
    if not out.is_file():
        sh(["transfusion", "eval", run, "--suite", *suites, "--n", str(n), *sampler,
            *(["--no-fid"] if QUICK else []), "--out", out])
    return json.loads(out.read_text())


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


ATTRIBUTES = ("colour", "shape", "size", "position", "count", "relation", "exact")


def shapes_table(before: dict, after: dict, label: str = "after GRPO, shapes reward", *more: tuple[str, dict]
                 ) -> list[str]:
    """Text to image before and after (and ``more`` (label, evaluation) rows); with captions and
    text when the evaluations hold them."""
    text = "i2t" in before
    lines = ["| model | FID | " + " | ".join(f"t2i {a}" for a in ATTRIBUTES) + " |"
             + (" caption colour | caption CIDEr-D | English perplexity |" if text else ""),
             "|" + "---|" * (len(ATTRIBUTES) + (5 if text else 2))]
    for name, r in (("before (`small`)", before), (label, after), *more):
        fid = r["t2i"].get("fid")
        lines.append(f"| {name} | {'-' if fid is None else f'{fid:.1f}'} | "
                     + " | ".join(pct(r["t2i"]["accuracy"].get(a)) for a in ATTRIBUTES) + " |"
                     + (f" {pct(r['i2t']['accuracy'].get('colour'))} | {r['i2t']['cider_d']:.2f} | "
                        f"{r['text']['english']['perplexity']:.2f} |" if text else ""))
    return lines + [""]


def verdicts(before: dict, after: dict) -> list[str]:
    """Each target of the shapes reward, met or not, with the measured figure."""
    a, b = after["t2i"]["accuracy"], before["t2i"]["accuracy"]
    lines = [f"- {k} >= {pct(v)}: **{pct(a[k])}** ({'met' if a[k] >= v else 'missed'}; before {pct(b[k])})"
             for k, v in TARGETS.items()]
    kept = [k for k in ("colour", "shape", "size", "position") if a[k] < b[k]]
    lines.append(f"- colour, shape, size, position no worse: {'met' if not kept else 'worse on ' + ', '.join(kept)}")
    if after["t2i"].get("fid") and before["t2i"].get("fid"):
        ratio = after["t2i"]["fid"] / before["t2i"]["fid"]
        lines.append(f"- FID no worse by more than 10%: {ratio - 1:+.0%} ({'met' if ratio <= 1.1 else 'missed'})")
    if "text" not in after:
        return lines + [""]
    ppl = after["text"]["english"]["perplexity"] / before["text"]["english"]["perplexity"]
    cap = after["i2t"]["cider_d"] / max(before["i2t"]["cider_d"], 1e-9)
    lines.append(f"- English perplexity within 5%: {ppl - 1:+.1%} ({'met' if abs(ppl - 1) <= 0.05 else 'missed'}); "
                 f"caption CIDEr-D {cap - 1:+.1%}")
    return lines + [""]


def edit_table(before: dict, after: dict) -> list[str]:
    lines = ["| model | success | preservation | pixel error | unchanged source: pixel error | text to image: pixel "
             "error |", "|---|---|---|---|---|---|"]
    for label, r in (("before (editing fine-tune)", before), ("after GRPO, edit reward", after)):
        m = r["edit"]["model"]["all"]
        lines.append(f"| {label} | {pct(m['success'])} | {pct(m['preservation'])} | {m['pixel_error']:.4f} | "
                     f"{r['edit']['source_unchanged']['all']['pixel_error']:.4f} | "
                     f"{r['edit']['text_to_image']['all']['pixel_error']:.4f} |")
    m, e = after["edit"]["model"]["all"], after["edit"]
    floor = min(e["source_unchanged"]["all"]["pixel_error"], e["text_to_image"]["all"]["pixel_error"])
    met = m["preservation"] >= 0.8 and m["success"] >= 0.7
    return lines + ["", f"- preservation >= 80% with success >= 70%: **{pct(m['preservation'])}** with "
                    f"**{pct(m['success'])}** ({'met' if met else 'missed'})",
                    f"- pixel error below both baselines: {m['pixel_error']:.4f} against {floor:.4f} "
                    f"({'met' if m['pixel_error'] < floor else 'missed'})", ""]


def settings_compared(name: str, settings: list, tried: list[tuple[str, Path]], run: Path) -> list[str]:
    """The settings tried and the one kept (``settings``, its run ``run``): a table of each one's
    held-out reward (its own sampler, 64 prompts) and batch reward, first and last, and a plot of
    both against samples drawn (docs/posttraining/NAME_settings.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = (f"guidance {setting(settings, 'guidance')}, {setting(settings, 'prompts')} prompts x "
            f"{setting(settings, 'group')}, lr {setting(settings, 'lr')} (kept)")
    lines = ["| settings | updates | samples drawn | held-out reward, first -> last | batch reward, mean of the "
             "first 10 updates -> the last 10 |", "|---|---|---|---|---|"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    for label, path in [*tried, (kept, run / "metrics.jsonl")]:
        rows = metrics_rows(path)
        updates, held = [r for r in rows if "reward" in r], [r for r in rows if "heldout_reward" in r]
        batch = [r["reward"] for r in updates]
        first, last = held[0]["heldout_reward"], held[-1]["heldout_reward"]
        lines.append(f"| {label} | {len(updates)} | {updates[-1]['samples_drawn']} | {first:.3f} -> {last:.3f} | "
                     f"{sum(batch[:10]) / len(batch[:10]):.3f} -> {sum(batch[-10:]) / len(batch[-10:]):.3f} |")
        axes[0].plot([r["samples_drawn"] for r in held], [r["heldout_reward"] - first for r in held], "o-", label=label)
        window = [sum(batch[max(0, i - 9):i + 1]) / len(batch[max(0, i - 9):i + 1]) for i in range(len(batch))]
        axes[1].plot([r["samples_drawn"] for r in updates], window, label=label)
    axes[0].set_title("held-out reward, change from the start (each run's own sampler)")
    axes[1].set_title("batch reward, mean of the last 10 updates")
    for ax in axes:
        ax.set_xlabel("samples drawn")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "posttraining" / f"{name}_settings.png", dpi=100)
    plt.close(fig)
    return lines + ["", f"![the settings tried, against samples drawn](posttraining/{name}_settings.png)", ""]


def metrics_rows(path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (or a copy of one)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def held_out_rows(run: Path) -> list[dict]:
    """The held-out evaluations of a post-training run (its metrics.jsonl), the start's first."""
    return [r for r in metrics_rows(run / "metrics.jsonl") if "heldout_reward" in r]


def held_out_row(run: Path) -> dict:
    """The last held-out evaluation of a post-training run."""
    return held_out_rows(run)[-1]


def shapes_evaluated(run: Path) -> tuple[dict, dict, dict, dict]:
    """A shapes run's evaluations and its start's (made once, then read): guided before and after
    (text to image, captions, text), then unguided before and after (text to image)."""
    before, after = (evaluate(r, "skills", ["t2i", "i2t", "text"], N_T2I) for r in (BASE, run))
    plain_before, plain_after = (evaluate(r, "t2i_unguided", ["t2i"], N_T2I, UNGUIDED) for r in (BASE, run))
    return before, after, plain_before, plain_after


def shapes_lines(run: Path) -> list[str]:
    """The shapes run's section, its evaluations made first (skipped when stored)."""
    before, after, plain_before, plain_after = shapes_evaluated(run)
    last = held_out_row(run)
    return ["### Shapes reward on `small`", "", f"`transfusion posttrain runs/small --out runs/small_grpo "
            f"{shlex.join(SHAPES)}`: {last['wall_seconds'] / 60:.0f} minutes of updates, "
            f"{last['samples_drawn']} samples drawn.", "",
            f"`transfusion eval {shlex.join(SAMPLER)}` (guidance 3, as the run is used afterwards):", "",
            *shapes_table(before, after), *verdicts(before, after),
            f"`transfusion eval {shlex.join(UNGUIDED)}` (no guidance, as the run sampled while it trained):", "",
            *shapes_table(plain_before, plain_after),
            f"Held-out captions in words training never showed (the run's last evaluation, no guidance): reward "
            f"{last.get('paraphrased_reward', 0):.2f} against {last['heldout_reward']:.2f} for the same scenes in "
            f"the usual words.", "",
            *shapes_figures(run, "shapes"),
            "The settings tried before these (each stopped where its reward had not risen):", "",
            *settings_compared("shapes", SHAPES, SHAPES_TRIED, run)]


def strict_lines(run: Path) -> list[str]:
    """The strict shapes reward's section: its run against the same start, both samplers."""
    label = "after GRPO, shapes_strict reward"
    before, after, plain_before, plain_after = shapes_evaluated(run)
    held = held_out_rows(run)
    first, last = held[0], held[-1]
    return ["### The strict shapes reward on `small`", "", f"`transfusion posttrain runs/small --out "
            f"runs/small_grpo_strict {shlex.join(SHAPES_STRICT)}`: {last['wall_seconds'] / 60:.0f} minutes of "
            f"updates, {last['samples_drawn']} samples drawn.", "",
            f"`transfusion eval {shlex.join(UNGUIDED)}` (no guidance, as the run sampled while it trained):", "",
            *shapes_table(plain_before, plain_after, label), *verdicts(plain_before, plain_after),
            f"`transfusion eval {shlex.join(SAMPLER)}` (guidance 3):", "",
            *shapes_table(before, after, label), *verdicts(before, after),
            f"Held-out captions in words training never showed (64, no guidance): exact "
            f"{pct(first.get('paraphrased_exact'))} at the start and {pct(last.get('paraphrased_exact'))} at the end, "
            f"against {pct(first['heldout_exact'])} and {pct(last['heldout_exact'])} for the same scenes in the usual "
            f"words.", "",
            *shapes_figures(run, "shapes_strict"),
            "The same recipe at twice the learning rate, with guidance while sampling, with larger groups, and the "
            "run kept (held-out reward of the strict reward, 64 captions, each run's own sampler):",
            "", *settings_compared("shapes_strict", SHAPES_STRICT, STRICT_TRIED, run)]


def focus_lines(run: Path) -> list[str]:
    """The strict recipe on count and relation captions only, against its first 210 updates on every
    caption (as many count and relation captions), with both samplers."""
    before, after, plain_before, plain_after = shapes_evaluated(run)
    strict, plain_strict = (json.loads(path.read_text()) for path in STRICT_210)
    focus = f"after GRPO on count and relation captions only ({setting(SHAPES_FOCUS, 'steps')} updates)"
    strict_label = "after GRPO on every caption (210 updates)"
    last = held_out_row(run)
    return ["### Count and relation captions only", "",
            f"`transfusion posttrain runs/small --out runs/small_grpo_focus {shlex.join(SHAPES_FOCUS)}`: "
            f"{last['wall_seconds'] / 60:.0f} minutes of updates, {last['samples_drawn']} samples drawn. They hold as "
            f"many count and relation captions as the strict recipe's first 210 updates (its best update on the "
            f"validation captions; its evaluations are `posttraining_tried/shapes_strict_lr5e-5_210_eval_cfg*.json`), "
            f"with none of their single-object captions. Test captions of every kind:", "",
            f"`transfusion eval {shlex.join(UNGUIDED)}` (no guidance, as the runs sampled while they trained):", "",
            *shapes_table(plain_before, plain_after, focus, (strict_label, plain_strict)),
            *verdicts(plain_before, plain_after),
            f"`transfusion eval {shlex.join(SAMPLER)}` (guidance 3):", "",
            *shapes_table(before, after, focus, (strict_label, strict)), *verdicts(before, after),
            *shapes_figures(run, "shapes_focus")]


def edits_lines(run: Path) -> list[str]:
    """The editing run's section, its evaluations made first (skipped when stored)."""
    before, after = (evaluate(r, "edits", ["edit"], N_EDIT) for r in (EDIT_BASE, run))
    plain_before, plain_after = (evaluate(r, "edits_unguided", ["edit"], N_EDIT, UNGUIDED) for r in (EDIT_BASE, run))
    figures(run, "edits")
    return ["### Edit reward on the editing fine-tune", "", f"`transfusion posttrain runs/small_edit_ref --out "
            f"runs/small_edit_grpo {shlex.join(EDITS)}`: {held_out_row(run)['wall_seconds'] / 60:.0f} minutes of "
            f"updates; {N_EDIT} held-out triples.", "",
            f"`transfusion eval {shlex.join(SAMPLER)}` (guidance 3):", "", *edit_table(before, after),
            f"`transfusion eval {shlex.join(UNGUIDED)}` (no guidance, as the run sampled while it trained):", "",
            *edit_table(plain_before, plain_after),
            "![reward and judged shares](posttraining/edits_curves.png)", "",
            "![before](posttraining/edits_before.png) ![after](posttraining/edits_after.png)", "",
            "The settings tried (each held-out reward on 64 test triples, with the run's own guidance):", "",
            *settings_compared("edits", EDITS, EDITS_TRIED, run)]


def signal_lines(run: Path) -> list[str]:
    """Where GRPO's signal is: the start's and the strict run's groups, attribute by attribute."""
    updates, group, guidance = 8, setting(SHAPES_STRICT, "group"), float(setting(SHAPES_STRICT, "guidance"))
    before, after = (groups_drawn(r, SHAPES_STRICT, updates) for r in (BASE, run))
    captions = updates * int(setting(SHAPES_STRICT, "prompts"))
    sampled = "no guidance" if guidance == 1 else f"guidance {guidance:g}"
    rows = [f"| {a} | {pct(before.get(a))} | {pct(before.get('varied_' + a))} | {pct(after.get(a))} | "
            f"{pct(after.get('varied_' + a))} |" for a in ATTRIBUTES]
    return ["### Where the signal is: groups that disagree", "",
            f"A group whose samples all score alike has zero advantages and teaches nothing. The first {updates} "
            f"updates' prompts and noise ({captions} captions x {group} samples, {sampled}, nothing trained), drawn "
            f"by `small` and by the strict run: per attribute, the share of samples right and the share of the "
            f"groups stating it whose samples disagree on it.", "",
            "| attribute | `small`: right | `small`: groups that disagree | after `shapes_strict`: right | "
            "after: groups that disagree |", "|---|---|---|---|---|", *rows,
            f"| the reward | | {pct(before['groups_varied'])} | | {pct(after['groups_varied'])} |", ""]


def failures_lines(runs: dict[str, Path]) -> list[str]:
    """What count and relation captions fail on, for each of ``runs`` (label: run), both samplers."""
    draws, captions = 4, (2 if QUICK else None)
    lines = ["### What count and relation captions fail on", "",
             f"Every count and relation caption of the test split, {draws} samples each (DDPM 20 steps, the same "
             f"noise for every model), read by the shapes reader: how many objects are drawn, and whether they are "
             f"the ones named. A count holds when as many objects of the named colour and shape are drawn as the "
             f"caption asks for; a relation when both named objects are drawn and placed as it says.", ""]
    for kind, names in FAILURES.items():
        lines += [f"| {kind} captions | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for guidance in (1.0, 3.0):
            for label, run in runs.items():
                shares = failures(run, SHAPES_STRICT, guidance, draws, captions)[kind]
                lines.append(f"| {label}, {'no guidance' if guidance == 1 else f'guidance {guidance:g}'} | "
                             + " | ".join(pct(shares[name]) for name in names) + " |")
        lines.append("")
    return lines


def shapes_figures(run: Path, name: str) -> list[str]:
    """A shapes run's curves and held-out grids (``figures``), and the page's lines showing them."""
    figures(run, name)
    return [f"![reward and judged shares against wall clock and samples drawn](posttraining/{name}_curves.png)", "",
            "Held-out captions, same noise, before and after:", "",
            f"![before](posttraining/{name}_before.png) ![after](posttraining/{name}_after.png)", ""]


def figures(run: Path, name: str) -> None:
    """A run's curves and its first and last held-out grids, into docs/posttraining/."""
    folder = DOCS / "posttraining"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / "curves.png", folder / f"{name}_curves.png")
    grids = sorted((run / "samples").glob("step_*.png"))
    shutil.copy2(grids[0], folder / f"{name}_before.png")
    shutil.copy2(grids[-1], folder / f"{name}_after.png")


def section(name: str, measure, runs: tuple[Path, ...],
            kept: tuple[str, ...] = ("eval/posttraining_*.json", "metrics.jsonl")) -> list[str]:
    """A section of the page, measured once: ``measure()`` builds it, and its lines go to
    ``STORE/name.md`` with the files of ``runs`` it was made from (``kept``) beside them (``STORE/name/``)."""
    path = STORE / f"{name}.md"
    if not path.is_file():
        lines = measure()
        for run in runs:
            keep = STORE / name / run.name
            keep.mkdir(parents=True, exist_ok=True)
            for source in [f for pattern in kept for f in run.glob(pattern)]:
                if source.is_file():
                    shutil.copy2(source, keep / source.name)
        path.write_text("\n".join(lines) + "\n")
    return path.read_text().splitlines()


def write_page(sections: list[str]) -> None:
    lines = [f"Made by `python experiments/posttraining.py`: held-out captions and edits, before and after. Text "
             f"to image on {N_T2I} held-out captions (FID and what the reader finds).", "", *sections]
    write_measurements(DOCS / "posttraining.md", "experiments/posttraining.py", lines, "# Post-training")


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    shapes_run, edits_run = RUNS / f"{PRESET}_grpo", RUNS / f"{PRESET}_edit_grpo"
    strict_run, focus_run = RUNS / f"{PRESET}_grpo_strict", RUNS / f"{PRESET}_grpo_focus"

    def shapes() -> list[str]:
        trained(BASE, [])
        posttrained(BASE, shapes_run, SHAPES)
        return shapes_lines(shapes_run)

    def strict() -> list[str]:
        trained(BASE, [])
        posttrained(BASE, strict_run, SHAPES_STRICT)
        return strict_lines(strict_run)

    def focus() -> list[str]:
        trained(BASE, [])
        posttrained(BASE, focus_run, SHAPES_FOCUS)
        return focus_lines(focus_run)

    def edits() -> list[str]:
        trained(BASE, [])
        trained(EDIT_BASE, [f"train.init_from={BASE}", *EDIT_FINE_TUNE])
        posttrained(EDIT_BASE, edits_run, EDITS)
        return edits_lines(edits_run)

    pending = ["### Edit reward on the editing fine-tune", "", "Not yet measured.", ""]
    measured = section("shapes", shapes, (BASE, shapes_run))
    write_page([*measured, *pending])  # each section on the page as soon as it is measured
    measured += section("shapes_strict", strict, (BASE, strict_run), ("eval/posttraining_skills.json",
                        "eval/posttraining_t2i_unguided.json", "metrics.jsonl"))
    write_page([*measured, *pending])
    measured += section("signal", lambda: signal_lines(strict_run), (BASE, strict_run),
                        ("eval/posttraining_groups.json",))
    write_page([*measured, *pending])
    measured += section("shapes_focus", focus, (focus_run,), ("eval/posttraining_skills.json",
                        "eval/posttraining_t2i_unguided.json", "metrics.jsonl"))
    write_page([*measured, *pending])
    compared = {"`small`": BASE, f"after GRPO on every caption ({setting(SHAPES_STRICT, 'steps')} updates)": strict_run,
                f"after GRPO on count and relation captions ({setting(SHAPES_FOCUS, 'steps')} updates)": focus_run}
    measured += section("failures", lambda: failures_lines(compared), tuple(compared.values()),
                        ("eval/posttraining_failures_*.json",))
    write_page([*measured, *pending])
    write_page([*measured, *section("edits", edits, (EDIT_BASE, edits_run))])


if __name__ == "__main__":
    main()
