"""Quality per second of the samplers on a trained run: which one to use interactively.

    python experiments/samplers.py [--run runs/small] [--n 1024]   # about 50 minutes here; reruns skip finished work

Each setting of ``SETTINGS`` samples one image for each of the first ``n`` held-out captions
(caption i with seed i, guidance 3) through ``transfusion eval --suite t2i --no-fid``; the
attribute reader scores them. Writes docs/sampling_sweep.md (table, with the binomial
standard error of the sparsest attributes) and docs/sampling/quality_vs_time.png. Every
setting is cached as JSON under RUN/eval/samplers/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ATTRIBUTES = ("colour", "shape", "size", "position", "count", "relation", "exact")
# (label, flags): the paper's DDPM 250 first (the reference), then cheaper settings
SETTINGS = [
    ("ddpm 250", ["--sampler", "ddpm", "--steps", "250"]),
    ("ddpm 50", ["--sampler", "ddpm", "--steps", "50"]),
    ("ddpm 25", ["--sampler", "ddpm", "--steps", "25"]),
    ("ddim 50, eta 1", ["--sampler", "ddim", "--steps", "50", "--eta", "1"]),
    ("ddim 50, eta 0.5", ["--sampler", "ddim", "--steps", "50", "--eta", "0.5"]),
    ("dpm++sde 50", ["--sampler", "dpm++sde", "--steps", "50"]),
    ("dpm++sde 25", ["--sampler", "dpm++sde", "--steps", "25"]),
    ("unipc 25", ["--sampler", "unipc", "--steps", "25"]),
    ("dpm++ 25", ["--sampler", "dpm++", "--steps", "25"]),
]


def measure(run: Path, n: int, label: str, flags: list[str]) -> dict:
    out = run / "eval" / "samplers" / (label.replace(" ", "_").replace(",", "") + ".json")
    timing = out.with_suffix(".time")
    if not (out.is_file() and timing.is_file()):
        args = ["transfusion", "eval", str(run), "--suite", "t2i", "--no-fid", "--n", str(n), "--cfg", "3", *flags,
                "--out", str(out)]
        print("$ " + " ".join(shlex.quote(a) for a in args), flush=True)
        start = time.perf_counter()
        subprocess.run(args, check=True, cwd=ROOT)
        timing.write_text(f"{time.perf_counter() - start:.1f}\n")
    report = json.loads(out.read_text())["t2i"]
    return {"accuracy": report["accuracy"], "seconds": float(timing.read_text()), "samples": report["settings"]["samples"]}


def judged(run: Path, n: int) -> dict[str, int]:
    """How many of the first ``n`` held-out captions each attribute is scored on (the reader
    applied to the true images: an attribute a caption does not name is not scored)."""
    from transfusion.checkpoint import load_checkpoint
    from transfusion.evaluate import held_out_pairs
    from transfusion.metrics.shapes_reader import score

    docs = held_out_pairs(load_checkpoint(run), n)  # the captions `transfusion eval` samples
    scores = [score(d.images[0].pixels, d.caption) for d in docs]
    return {a: sum(s.get(a) is not None for s in scores) for a in ATTRIBUTES}


def plot(rows: list[tuple[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, attr in zip(axes, ("shape", "count", "relation", "exact")):
        for label, r in rows:
            ax.scatter(r["seconds"], 100 * r["accuracy"][attr], s=25)
            ax.annotate(label, (r["seconds"], 100 * r["accuracy"][attr]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ref = rows[0][1]
        ax.axhline(100 * ref["accuracy"][attr] - 2, color="grey", lw=0.8, ls="--")
        ax.axvline(ref["seconds"] / 5, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("seconds for all captions (log)")
        ax.set_ylabel(f"{attr} (%)")
        ax.set_title(attr)
    fig.suptitle("quality against time (dashed: reference - 2 points; dotted: a fifth of its time)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=str(ROOT / "runs" / "small"))
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--only", nargs="*", default=None, help="labels of SETTINGS to run besides ddpm 250 (default: all)")
    p.add_argument("--docs", default=str(DOCS), help="folder for sampling_sweep.md and sampling/quality_vs_time.png")
    args = p.parse_args()
    docs = Path(args.docs)
    run = Path(args.run)
    chosen = [s for s in SETTINGS if args.only is None or s[0] in args.only or s is SETTINGS[0]]
    rows = [(label, measure(run, args.n, label, flags)) for label, flags in chosen]
    ref, scored = rows[0][1], judged(run, args.n)
    se = {a: 100 * (ref["accuracy"][a] * (1 - ref["accuracy"][a]) / max(scored[a], 1)) ** 0.5 for a in ATTRIBUTES}
    lines = ["# Samplers: quality per second", "",
             f"Made by `python experiments/samplers.py --run {args.run} --n {args.n}`: one image for each of the first "
             f"{ref['samples']} held-out captions (seed i for caption i, guidance 3), scored by the attribute reader; time is the "
             "whole `transfusion eval --suite t2i --no-fid` command on 2 CPU cores.", "",
             "| sampler | " + " | ".join(ATTRIBUTES) + " | seconds | time vs ddpm 250 | worst gap (points) |",
             "|---|" + "---|" * (len(ATTRIBUTES) + 3)]
    for label, r in rows:
        gap = max(100 * (ref["accuracy"][a] - r["accuracy"][a]) for a in ATTRIBUTES)
        lines.append(f"| {label} | " + " | ".join(f"{100 * r['accuracy'][a]:.1f}" for a in ATTRIBUTES)
                     + f" | {r['seconds']:.0f} | {r['seconds'] / ref['seconds']:.2f} | {gap:+.1f} |")
    lines += ["| captions scored | " + " | ".join(str(scored[a]) for a in ATTRIBUTES) + " | | | |",
              "| standard error of ddpm 250 | " + " | ".join(f"{se[a]:.1f}" for a in ATTRIBUTES) + " | | | |",
              "", "Worst gap: the largest drop below DDPM 250 over the attributes (negative: better on every one). "
              "Every setting samples the same captions with the same seeds. The standard error is the binomial one "
              "of DDPM 250's proportion on the captions scored; the paired differences' own spread is not measured."]
    plot(rows, docs / "sampling" / "quality_vs_time.png")
    lines += ["", "![quality against time](sampling/quality_vs_time.png)"]
    (docs / "sampling_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
