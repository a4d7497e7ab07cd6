"""Shared harness of the paper-claim experiments (second round): arms, seeds, equal-FLOPs
training, evaluation, tables with their spread, plots and verdicts.

Every arm is the ``tiny`` preset plus a few overrides, trained with `transfusion train` under
one protocol: text and image-caption data mixed 1:1 *by tokens* (the paper's mix), the same
KL autoencoder for every diffusion arm (the Chameleon arms one VQ autoencoder), three
training seeds (``train.seed``: initialisation and data order). A run trains until its
cumulative training FLOPs (6 N D, N the parameters a token uses, D real tokens) reach the
largest budget of its family and keeps a checkpoint at each smaller one: ``steps = budget /
(6 N tokens-per-step)``, tokens per step measured on the run's own batches. Checkpoints are
scored with `transfusion eval`. Everything is cached under ``runs/claims2/``: a rerun skips
what is done, an interrupted one resumes.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = os.environ.get("CLAIMS_SMOKE") == "1"  # a minutes-long dry run of the whole pipeline
RUNS = Path(os.environ.get("CLAIMS_RUNS", ROOT / "runs" / ("claims_smoke" if SMOKE else "claims2")))
DOCS = Path(os.environ.get("CLAIMS_DOCS", RUNS / "docs" if SMOKE else ROOT / "docs" / "results"))
CLI = shlex.split(os.environ.get("CLAIMS_CLI", "transfusion"))  # how `transfusion` is run (e.g. from another checkout)
PROTOCOL = ["data.mix_by=tokens", "data.text_fraction=0.5"]  # the paper's 1:1 text : image-caption mix
SEEDS = (0, 1) if SMOKE else (0, 1, 2)
LONG = (2e11, 4e11) if SMOKE else (2.5e13, 1e14)  # (a), (b), (c): one run to 1e14 per arm and seed
SHORT = (2e11, 4e11) if SMOKE else (1.5e13, 3e13)  # (d)-(g) and the real-image (a)
T2I_N = 8 if SMOKE else 1000  # text-to-image: FID on 1000 held-out images (and on the first 256)
N = 8 if SMOKE else 256  # captions, text documents, interleaved documents
TABLE3 = ("ddpm", 4 if SMOKE else 250)  # the paper's sampler for the Transfusion/Chameleon comparison
FAST = ("dpm++", 4 if SMOKE else 25)  # every other DDPM row (docs/sampling.md: ~DDPM-250 quality, 9x faster)
FLOW = ("euler", 4 if SMOKE else 25)  # every flow-matching row
SIZES = {"S": ["model.dim=128", "model.n_layers=2", "model.n_heads=2"],  # the scaling figure's model sizes
         "L": ["model.dim=320", "model.n_layers=6", "model.n_heads=5"]}  # ("M" is tiny itself)


def ae_dir(kind: str, dataset: str = "shapes") -> Path:
    return RUNS / (f"ae_{kind}" if dataset == "shapes" else f"ae_{kind}_{dataset}")


LINEAR = ["image.adapter=linear", "image.patch_size=2"]
CHAMELEON = ["image.objective=tokens", f"image.autoencoder={ae_dir('vq')}"]
MNIST = ["data.dataset=mnist", f"image.autoencoder={ae_dir('kl', 'mnist')}"]
# arm name -> overrides of the tiny preset (after PROTOCOL; the shapes KL autoencoder unless named)
ARMS = {
    "linear": LINEAR,  # Table 3's Transfusion: linear 2x2 patches, bidirectional within an image
    "chameleon": CHAMELEON,
    "transfusion": [],  # the U-Net arm: the baseline of the ablations (c)-(g)
    "linear_causal": [*LINEAR, "image.attention=causal"],
    "no_noise_cap": ["diffusion.image_first_max_t=1000"],
    "flow": ["diffusion.objective=flow"],  # the paper's lambda = 5
    "mot": ["model.mot=true"],
    # (g): the tiny trunk pretrained as a text-only LM (exported, then read back as a transformers folder)
    "lmfusion": [f"model.init_from={RUNS / 'text_lm_hf'}", "model.mot=true", "model.freeze_text=true"],
    "mnist_linear": [*LINEAR, *MNIST],
    "mnist_chameleon": ["image.objective=tokens", *MNIST, f"image.autoencoder={ae_dir('vq', 'mnist')}"],
    **{f"{arm}_{size}": [*base, *SIZES[size]] for arm, base in (("linear", LINEAR), ("chameleon", CHAMELEON))
       for size in SIZES},
}


@dataclass(frozen=True)
class Row:
    """One row of a table: an arm, how its images are sampled (None: the arm's default), a label."""

    arm: str
    label: str
    sampler: tuple[str, int] | None = None

    def how(self) -> tuple[str, int] | None:
        if self.sampler:
            return self.sampler
        if "image.objective=tokens" in ARMS[self.arm]:
            return None  # codes at temperature 1
        return FLOW if "diffusion.objective=flow" in ARMS[self.arm] else FAST


def sh(args: list) -> None:
    """Run a command, echoing it as a user would type it."""
    print("$ " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    typed = " ".join(str(a) for a in args)
    if args[0] == "transfusion":
        args = [*CLI, *args[1:]]
    start = time.time()
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT)
    RUNS.mkdir(parents=True, exist_ok=True)
    with open(RUNS / "commands.jsonl", "a") as log:  # the wall clock of every finished command, for the totals
        log.write(json.dumps({"command": typed, "seconds": round(time.time() - start, 1)}) + "\n")


def autoencoders(dataset: str = "shapes") -> None:
    kl, vq = ae_dir("kl", dataset), ae_dir("vq", dataset)
    if not (kl / "autoencoder.json").is_file():
        sh(["transfusion", "autoencoder", "train", "--data", dataset, "--out", kl, "--steps", "20" if SMOKE else "1000"])
    if not (vq / "autoencoder.json").is_file():
        sh(["transfusion", "autoencoder", "train", "--vq", "--codebook-size", "512", "--data", dataset,
            "--out", vq, "--steps", "20" if SMOKE else "1500"])


def overrides(arm: str, seed: int = 0) -> list[str]:
    """The `transfusion train` overrides of ``arm`` under the protocol (later overrides win)."""
    return [*PROTOCOL, f"image.autoencoder={ae_dir('kl')}", *ARMS[arm], f"train.seed={seed}"]


def _batches(arm: str, extra: list[str] = (), seed: int = 0):
    """An arm's config, its model (untrained) and the builder of the batches its training sees."""
    from transfusion.autoencoders import load_autoencoder
    from transfusion.config import load_config
    from transfusion.data.stream import BatchBuilder, build_mixture
    from transfusion.model.transfusion import Transfusion
    from transfusion.train import build_tokenizer

    cfg = load_config("tiny", overrides=[*overrides(arm, seed), *extra])
    mixture = build_mixture(cfg)
    tokenizer, ae = build_tokenizer(cfg, mixture), load_autoencoder(cfg.image.autoencoder)
    model = Transfusion.build(cfg.model, cfg.image, tokenizer, ae, cfg.train.seed)
    return cfg, model, BatchBuilder(cfg, mixture, tokenizer, ae, model.num_patches)


def flops_per_step(arm: str, seed: int = 0) -> float:
    """6 N x mean real tokens of the run's first 64 batches (the same batches training sees)."""
    cfg, model, builder = _batches(arm, seed=seed)
    tokens = sum(builder.batch_at(s, cfg.train.seed).num_tokens for s in range(64)) / 64
    return 6 * model.num_params(active=True) * tokens


def text_per_flop(arm: str, extra: list[str] = (), batches: int = 16) -> dict:
    """English text an arm trains on per FLOP: positions of text-only documents per step, over
    6 N x tokens per step, on the run's first ``batches`` batches (with ``extra`` overrides)."""
    cfg, model, builder = _batches(arm, extra)
    text = tokens = 0
    for step in range(batches):
        b = builder.batch_at(step, cfg.train.seed)
        text += b.text_document_positions(None if b.latents else b.tokens >= model.vocab_size)  # patches, or VQ codes
        tokens += b.num_tokens
    flops = 6 * model.num_params(active=True) * tokens / batches
    return {"text_per_step": text / batches, "tokens_per_step": tokens / batches, "flops_per_step": flops,
            "text_per_gflop": text / batches / flops * 1e9}


def train(arm: str, seed: int, budgets: tuple[float, ...]) -> tuple[Path, dict[float, int]]:
    """Train ``arm`` with ``seed`` to the largest of ``budgets`` (multiples of the first),
    keeping a checkpoint at each; returns the run folder and {budget: step of its checkpoint}."""
    autoencoders("mnist" if "data.dataset=mnist" in ARMS[arm] else "shapes")
    out = RUNS / f"{arm}_s{seed}_{max(budgets):.0e}"
    plan_path = out / "plan.json"
    if plan_path.is_file():
        plan = {float(k): v for k, v in json.loads(plan_path.read_text()).items()}
    else:
        first = round(budgets[0] / flops_per_step(arm, seed))
        plan = {b: first * round(b / budgets[0]) for b in budgets}
        out.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(json.dumps(plan))
    if not (out / "report.json").is_file():
        sh(["transfusion", "train", "--preset", "tiny", "--out", out, *overrides(arm, seed),
            f"train.steps={max(plan.values())}", f"train.checkpoint_every={min(plan.values())}",
            "train.keep_checkpoints=0", "train.sample_every=0", "train.eval_samples=16"])
    return out, plan


def evaluate(run: Path, step: int, suites: list[str], guidance: float, how: tuple[str, int] | None) -> dict:
    """`transfusion eval` of ``run`` at ``step``, one cached report per suite (t2i on ``T2I_N``
    images, the others on ``N`` documents), merged; adds the run's training FLOPs at that step."""
    report: dict = {}
    for suite in suites:
        sampled = suite in ("t2i", "interleaved")
        n = T2I_N if suite == "t2i" else N
        tag = f"_cfg{guidance:g}_{how[0]}{how[1]}" if sampled and how else f"_cfg{guidance:g}" if sampled else ""
        out = run / "eval" / f"step{step}_{suite}_n{n}{tag}.json"
        if not out.is_file():
            flags = ["--sampler", how[0], "--steps", str(how[1])] if sampled and how else []
            sh(["transfusion", "eval", run / "checkpoints" / f"step_{step:06d}", "--suite", suite, "--n", str(n),
                *flags, "--cfg", str(guidance), "--out", out])
        report.update(json.loads(out.read_text()))
    state = json.loads((run / "checkpoints" / f"step_{step:06d}" / "state.json").read_text())
    saved = json.loads((run / "report.json").read_text())
    n_params = saved.get("active_parameters", saved["model_parameters"])  # MoT: one copy of each layer per token
    report["train_flops"] = 6 * n_params * state["tokens_seen"]
    return report


@dataclass
class Results:
    """Reports of every row at every budget, one per seed: ``reports[row][budget] -> [report]``."""

    rows: list[Row]
    budgets: tuple[float, ...]
    reports: dict
    metrics: dict

    def values(self, row: Row, budget: float, metric: str) -> list[float]:
        fn = self.metrics[metric][0]
        return [fn(r) for r in self.reports[row][budget]]

    def stat(self, row: Row, budget: float, metric: str) -> tuple[float, float]:
        """(mean, sample standard deviation) over seeds."""
        v = self.values(row, budget, metric)
        return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0

    def compare(self, a: Row, b: Row, metric: str, budget: float | None = None) -> dict:
        """Whether ``a`` beats ``b`` on ``metric`` (at the largest budget by default): a difference
        counts only when it exceeds the spread, the sum of the two standard deviations."""
        budget = budget or max(self.budgets)
        (ma, sa), (mb, sb) = self.stat(a, budget, metric), self.stat(b, budget, metric)
        lower = self.metrics[metric][1]
        better = (mb - ma) if lower else (ma - mb)
        outcome = "inconclusive" if abs(ma - mb) <= sa + sb else ("better" if better > 0 else "worse")
        return {"metric": metric, "budget": budget, "a": (ma, sa), "b": (mb, sb), "outcome": outcome}


def run_claim(name: str, title: str, rows: list[Row], suites: list[str], metrics: dict, budgets: tuple[float, ...],
              guidance: float = 3.0, seeds: tuple[int, ...] = SEEDS, note: str = "") -> Results:
    """Train and evaluate ``rows`` at every budget and seed; write the table and the plot.

    ``metrics``: {column label: (function of a report -> number, lower_is_better)}.
    Writes docs/results/NAME.md (a Markdown table, mean +/- sd over seeds) and NAME.png.
    """
    reports: dict = {row: {b: [] for b in budgets} for row in rows}
    for seed in seeds:  # every row of one seed first: a comparison exists after the first
        for row in rows:
            run, plan = train(row.arm, seed, budgets)
            for b in budgets:
                reports[row][b].append(evaluate(run, plan[b], suites, guidance, row.how()))
    results = Results(rows, budgets, reports, metrics)
    write_table(name, title, results, note)
    plot(name, title, results)
    return results


def write_table(name: str, title: str, results: Results, note: str = "") -> None:
    header = ["budget (FLOPs)", "arm", "steps", "train FLOPs"] + list(results.metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for budget in results.budgets:
        for row in results.rows:
            rs = results.reports[row][budget]
            steps = "/".join(sorted({str(r["step"]) for r in rs}, key=int))
            cells = [f"{budget:.2g}", row.label, steps, f"{statistics.fmean(r['train_flops'] for r in rs):.3g}"]
            cells += [pm(*results.stat(row, budget, m)) for m in results.metrics]
            lines.append("| " + " | ".join(cells) + " |")
    seeds = len(next(iter(results.reports[results.rows[0]].values())))
    settings = [f"Mean +/- standard deviation over {seeds} training seeds. Text to image: {T2I_N} held-out "
                f"captions (FID against their {T2I_N} real images; 'FID 256' on the first 256); captions, text and "
                f"interleaved documents: {N} each. Samplers: " + "; ".join(
                    f"{row.label}: " + (f"{row.how()[0]} {row.how()[1]} steps" if row.how() else "VQ codes, temperature 1")
                    for row in results.rows) + "."]
    (DOCS / f"{name}.md").parent.mkdir(parents=True, exist_ok=True)
    table = "\n".join([f"### {title}", "", *lines, "", *settings, *([note] if note else []), ""])
    (DOCS / f"{name}.md").write_text(table)
    print(table)


def plot(name: str, title: str, results: Results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(results.metrics))
    n_rows = -(-len(results.metrics) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.6 * cols, 3.2 * n_rows), squeeze=False)
    for ax, (label, (_, lower)) in zip(axes.flat, results.metrics.items()):
        for row in results.rows:
            xs = [statistics.fmean(r["train_flops"] for r in results.reports[row][b]) for b in results.budgets]
            stats = [results.stat(row, b, label) for b in results.budgets]
            ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=row.label)
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_title(f"{label} ({'lower' if lower else 'higher'} is better)", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(results.metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{title} (mean +/- sd over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(DOCS / f"{name}.png", dpi=100)
    plt.close(fig)


def fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}"


def pm(mean: float, sd: float) -> str:
    return f"{fmt(mean)} +/- {fmt(sd)}"


def t2i(key: str):
    return lambda r: r["t2i"]["accuracy"][key]


def i2t(key: str):
    return lambda r: r["i2t"]["accuracy"][key]


FID = {"FID": (lambda r: r["t2i"]["fid"], True), "FID 256": (lambda r: r["t2i"].get("fid_256", r["t2i"]["fid"]), True)}
# the image-quality table of the ablations (b) and (c)
T2I_METRICS = {**FID, "t2i colour": (t2i("colour"), False), "t2i shape": (t2i("shape"), False),
               "t2i position": (t2i("position"), False)}
# images, captions and text at once: (a), (f) and (g)
ALL_METRICS = {**FID, "t2i colour": (t2i("colour"), False), "t2i position": (t2i("position"), False),
               "caption colour": (i2t("colour"), False), "caption CIDEr-D": (lambda r: r["i2t"]["cider_d"], False),
               "text ppl": (lambda r: r["text"]["english"]["perplexity"], True)}


def verdict_row(claim: str, paper: str, c: dict, a_label: str, b_label: str, at_least_matches: bool = False) -> dict:
    """One line of the verdict table from ``Results.compare``: reproduced when ``a`` is better than
    ``b`` beyond the spread (as the paper found), not reproduced when worse beyond it, else
    inconclusive; for a claim that ``a`` *at least matches* ``b``, a difference within the spread
    also reproduces it."""
    verdict = {"better": "reproduced", "worse": "not reproduced"}.get(c["outcome"], "inconclusive")
    if at_least_matches and c["outcome"] == "inconclusive":
        verdict = "reproduced (within the spread)"
    ours = f"{a_label} {pm(*c['a'])} vs {b_label} {pm(*c['b'])} ({c['metric']}, {c['budget']:.2g} FLOPs)"
    return {"claim": claim, "paper": paper, "ours": ours, "verdict": verdict}


def verdicts(results: Results, a: Row, b: Row, names: tuple[str, str], lines: list[tuple[str, str, str]],
             at_least_matches: bool = False) -> list[dict]:
    """The verdict lines of ``a`` against ``b`` (called ``names``), one per (claim, paper's figure, metric)."""
    return [verdict_row(claim, paper, results.compare(a, b, metric), *names, at_least_matches)
            for claim, paper, metric in lines]


def save_verdicts(name: str, rows: list[dict]) -> None:
    """Keep a claim's verdict lines for run_all's table (docs/results/verdicts/NAME.json)."""
    folder = DOCS / "verdicts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")


def main(claim) -> None:
    """Entry point of each claim script: ``python experiments/paper_claims/X.py``."""
    sys.stdout.reconfigure(line_buffering=True)
    claim()
