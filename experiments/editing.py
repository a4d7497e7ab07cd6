"""Editing, end to end: pretrain `small`, fine-tune it on shapes edits, score held-out edits.

    python experiments/editing.py            # about 40 + 2 x 29 + 15 minutes on 2 CPU cores; reruns skip finished work

1. ``transfusion train --preset small --out runs/small`` (the longer CPU run);
2. ``transfusion train ... train.init_from=runs/small data.edit_fraction=0.6``: the same
   weights, tokenizer and autoencoder, a new optimizer and schedule, 60% editing triples
   mixed with the original data (shapes captions, English text, interleaved documents);
   and the same with ``image.edit_reference=true`` (the source also at the output's adapter);
3. ``transfusion eval --suite edit`` on the 500 held-out triples, at each sampling setting
   of ``GUIDANCE``, and ``--suite t2i i2t`` to see what the other skills kept.

Writes docs/editing.md's measurements (tables, below its marker line) and docs/editing/*.png (the held-out grid). Every step is
cached under runs/: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from pages import write_measurements

ROOT = Path(__file__).resolve().parents[1]
RUNS = Path(os.environ.get("EDIT_RUNS", ROOT / "runs"))
BASE = RUNS / "small"
FINE_TUNE = ["data.edit_fraction=0.6", "train.steps=3000", "optim.lr=1e-3", "optim.warmup_steps=100",
             "optim.min_lr=1e-4", "train.checkpoint_every=500", "train.sample_every=0", "train.eval_samples=32"]
# the two fine-tunes: edits through the sequence alone (the paper's), and with the source also
# fed to the output's adapter (image.edit_reference, InstructPix2Pix's conditioning)
TUNED = {"sequence only": (RUNS / "small_edit", []),
         "source at the adapter": (RUNS / "small_edit_ref", ["image.edit_reference=true"])}
SAMPLER = ["--sampler", "dpm++", "--steps", "25"]
GUIDANCE = {"cfg 3": ["--cfg", "3"], "cfg 3, image cfg 1.5": ["--cfg", "3", "--image-cfg", "1.5"],
            "cfg 1.5, image cfg 3": ["--cfg", "1.5", "--image-cfg", "3"],
            "cfg 3, image cfg 1.5, strength 0.8": ["--cfg", "3", "--image-cfg", "1.5", "--strength", "0.8"]}
DOCS = ROOT / "docs"


def sh(args: list) -> None:
    print("$ " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT)


def done(run: Path) -> bool:
    return (run / "report.json").is_file()


def evaluate(run: Path, name: str, suites: list[str], extra: list[str]) -> dict:
    out = run / "eval" / f"{name}.json"
    if not out.is_file():
        sh(["transfusion", "eval", run, "--suite", *suites, "--n", "500", *SAMPLER, *extra, "--out", out])
    return json.loads(out.read_text())


def pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def table(r: dict) -> list[str]:
    lines = ["| edit | n | success | preservation | pixel error | unchanged source: pixel error "
             "| text to image: success / pixel error |", "|---|---|---|---|---|---|---|"]
    for kind, m in r["model"].items():
        t2i = r["text_to_image"][kind]
        lines.append(f"| {kind} | {m['n']} | {pct(m['success'])} | {pct(m['preservation'])} | "
                     f"{m['pixel_error']:.4f} | {r['source_unchanged'][kind]['pixel_error']:.4f} | "
                     f"{pct(t2i['success'])} / {t2i['pixel_error']:.4f} |")
    return lines + [""]


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    if not done(BASE):
        sh(["transfusion", "train", "--preset", "small", "--out", BASE])
    for run, extra in TUNED.values():
        if not done(run):
            sh(["transfusion", "train", "--preset", "small", "--out", run, f"train.init_from={BASE}", *FINE_TUNE, *extra])
    results = {(name, label): evaluate(run, f"edit_{i}", ["edit"], flags)["edit"]
               for name, (run, _) in TUNED.items() for i, (label, flags) in enumerate(GUIDANCE.items())}
    skills = {"before (small)": evaluate(BASE, "skills", ["t2i", "i2t"], ["--cfg", "3", "--no-fid"])}
    skills |= {f"after: {name}": evaluate(run, "skills", ["t2i", "i2t"], ["--cfg", "3", "--no-fid"])
               for name, (run, _) in TUNED.items()}

    lines = ["Made by `python experiments/editing.py`; 500 held-out triples (`edits/test`), DPM-Solver++ 25 steps, "
             "one sample per triple. Two fine-tunes of the same start with the same data and schedule: *sequence "
             "only* (the source is context in the sequence, as in the paper) and *source at the adapter* (also "
             "`image.edit_reference=true`: the source's latents added to the output's U-Net input through a "
             "zero-initialised convolution).", "",
             "### Overall", "", "| fine-tune | sampling | success | preservation | pixel error |", "|---|---|---|---|---|"]
    for (name, label), r in results.items():
        m = r["model"]["all"]
        lines.append(f"| {name} | {label} | {pct(m['success'])} | {pct(m['preservation'])} | {m['pixel_error']:.4f} |")
    lines += [""]
    for (name, label), r in results.items():
        lines += [f"### {name}: {label}", "", *table(r)]
    lines += ["### The other skills, before and after fine-tuning (500 held-out captions / images, cfg 3)", "",
              "| model | t2i colour | t2i shape | t2i position | caption colour | caption shape | caption CIDEr-D |",
              "|---|---|---|---|---|---|---|"]
    for label, r in skills.items():
        a, c = r["t2i"]["accuracy"], r["i2t"]["accuracy"]
        lines.append(f"| {label} | {pct(a['colour'])} | {pct(a['shape'])} | {pct(a['position'])} | "
                     f"{pct(c['colour'])} | {pct(c['shape'])} | {r['i2t']['cider_d']:.2f} |")
    (DOCS / "editing").mkdir(parents=True, exist_ok=True)
    for j, (name, (run, _)) in enumerate(TUNED.items()):
        for i in range(len(GUIDANCE)):
            grid = run / "eval" / f"edit_{i}_edit.png"
            (DOCS / "editing" / f"held_out_{j}_{i}.png").write_bytes(grid.read_bytes())
    write_measurements(DOCS / "editing.md", "experiments/editing.py", lines, "# Editing images")


if __name__ == "__main__":
    main()
