"""Shared harness of the paper-claim experiments (second round): arms, seeds, equal-FLOPs
training, evaluation, tables with their spread, plots and verdicts.

Every arm is the ``tiny`` preset plus a few overrides, trained with `transfusion train` under
one protocol: text and image-caption data mixed 1:1 *by tokens* (the paper's mix), the same
KL autoencoder for every diffusion arm (the Chameleon arms one VQ autoencoder), three
training seeds (``train.seed``: initialisation and data order). A run trains until its
cumulative training FLOPs (6 N D, N the parameters a token uses, D real tokens) reach the
largest budget of its family and keeps a checkpoint at each smaller one: ``steps = budget /
(6 N tokens-per-step)``, tokens per step measured on the run's own batches. Checkpoints are
scored with `transfusion eval`. Every score and run record is kept in
``experiments/paper_claims/scores/`` (committed, so a fresh checkout rebuilds every table
without training anything), the runs themselves under ``runs/claims2/``: a rerun trains and
scores only what the store lacks, an interrupted one resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
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
# every score and run record, kept in the repository: tables rebuild from it, reruns resume from it
STORE = Path(os.environ.get("CLAIMS_STORE", RUNS / "scores" if SMOKE else ROOT / "experiments" / "paper_claims" / "scores"))
DOCS = Path(os.environ.get("CLAIMS_DOCS", RUNS / "docs" if SMOKE else ROOT / "docs" / "results"))
CLI = shlex.split(os.environ.get("CLAIMS_CLI", "transfusion"))  # how `transfusion` is run (e.g. from another checkout)
# the paper's 1:1 text : image-caption mix; 5% interleaved documents whatever the preset's share
PROTOCOL = ["data.mix_by=tokens", "data.text_fraction=0.5", "data.interleaved_fraction=0.05"]
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


EMOJI_DIR = RUNS / "emoji"  # the Noto colour emoji with their English names (examples/emoji_folder.py), 32 px
# dataset name -> its data.dataset spec: the built-in shapes, the 5,000 MNIST digits, the emoji folder
DATASETS = {"shapes": "shapes", "mnist": "mnist", "emoji": f"{EMOJI_DIR}/{{split}}"}


def real_images(dataset: str) -> list[str]:
    """The overrides that train on a real-image dataset, with its own KL autoencoder."""
    return [f"data.dataset={DATASETS[dataset]}", f"autoencoder.name={ae_dir('kl', dataset)}"]


LINEAR = ["image.adapter=linear", "image.patch_size=2"]
CHAMELEON = ["image.objective=tokens", f"autoencoder.name={ae_dir('vq')}"]
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
    **{f"{data}_{arm}": overrides for data in ("mnist", "emoji") for arm, overrides in (
        ("linear", [*LINEAR, *real_images(data)]),
        ("chameleon", ["image.objective=tokens", *real_images(data), f"autoencoder.name={ae_dir('vq', data)}"]))},
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


def sh(args: list, log: Path | None = None) -> None:
    """Run a command, echoing it as a user would type it; its wall clock goes to ``log``
    (default: the store's commands.jsonl)."""
    print("$ " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    typed = " ".join(str(a) for a in args)
    if args[0] == "transfusion":
        args = [*CLI, *args[1:]]
    elif args[0] == "python":
        args = [sys.executable, *args[1:]]
    start = time.time()
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT)
    log = log or STORE / "commands.jsonl"  # the wall clock of every finished command, for the totals
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write(json.dumps({"command": typed, "seconds": round(time.time() - start, 1)}) + "\n")


def _read(path: Path) -> dict:
    """A JSON record of the store, empty while it does not exist."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(path: Path, data: dict) -> None:
    """Write a JSON record whole or not at all (an interrupted write leaves the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def emoji_folder() -> None:
    """The emoji folder (train/ and test/, one name in ten held out), written when missing: it
    needs Debian's fonts-noto-color-emoji and PyPI's emoji."""
    if not (EMOJI_DIR / "test").is_dir():
        sh(["python", "examples/emoji_folder.py", "--out", EMOJI_DIR, "--size", "32"])


MAKE_DATA = {"emoji": emoji_folder}  # dataset -> what writes it (the others ship with the package)


def autoencoders(dataset: str = "shapes") -> None:
    """The KL and VQ autoencoders of ``dataset``, trained when missing. Training them is
    deterministic on a given machine; the store keeps each one's hash, and a retrained one
    that differs from the autoencoder earlier scores used is reported."""
    MAKE_DATA.get(dataset, lambda: None)()
    kl, vq, spec = ae_dir("kl", dataset), ae_dir("vq", dataset), DATASETS[dataset]
    if not (kl / "autoencoder.json").is_file():
        sh(["transfusion", "autoencoder", "train", "--data", spec, "--out", kl, "--steps", "20" if SMOKE else "1000"])
    if not (vq / "autoencoder.json").is_file():
        sh(["transfusion", "autoencoder", "train", "--vq", "--codebook-size", "512", "--data", spec,
            "--out", vq, "--steps", "20" if SMOKE else "1500"])
    record = STORE / "autoencoders.json"
    known = _read(record)
    for folder in (kl, vq):
        digest = hashlib.sha256((folder / "autoencoder.safetensors").read_bytes()).hexdigest()
        if known.setdefault(folder.name, digest) != digest:
            print(f"warning: {folder} differs from the autoencoder the stored scores used (sha256 {known[folder.name]}); "
                  "runs trained on it are not comparable with them", file=sys.stderr, flush=True)
    _write(record, known)


def overrides(arm: str, seed: int = 0) -> list[str]:
    """The `transfusion train` overrides of ``arm`` under the protocol (later overrides win)."""
    return [*PROTOCOL, f"autoencoder.name={ae_dir('kl')}", *ARMS[arm], f"train.seed={seed}"]


def _batches(arm: str, extra: list[str] = (), seed: int = 0):
    """An arm's config, its model (untrained) and the builder of the batches its training sees."""
    from transfusion.components import build_components
    from transfusion.config import load_config

    cfg = load_config("tiny", overrides=[*overrides(arm, seed), *extra])
    run = build_components(cfg)  # the tokenizer and autoencoder as the run's config names them
    return cfg, run.model, run.batches


def flops_per_step(arm: str, seed: int = 0) -> float:
    """6 N x mean real tokens of the run's first 64 batches (the same batches training sees);
    kept in the store, as the runs' plans are made from it."""
    path, key = STORE / "flops_per_step.json", f"{arm}_s{seed}"
    known = _read(path)
    if key not in known:
        cfg, model, builder = _batches(arm, seed=seed)
        tokens = sum(builder.batch_at(s, cfg.train.seed).num_tokens for s in range(64)) / 64
        known[key] = 6 * model.num_params(active=True) * tokens
        _write(path, known)
    return known[key]


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


class Run:
    """One training run of the harness, trained only when a score it should give is missing.

    Scores are kept in ``STORE`` (committed with the repository), the run itself (checkpoints)
    under ``RUNS``: a fresh checkout rebuilds every table from the store, and a rerun trains
    and scores only what the store lacks. ``plan``: {label: checkpoint step}.
    """

    def __init__(self, name: str, train_args: list, plan: dict, prepare=None):
        self.name, self.train_args, self.plan, self.prepare = name, train_args, plan, prepare
        self.folder, self.store = RUNS / name, STORE / name

    def trained(self) -> Path:
        """The run's folder, trained first if needed; its record (parameters, tokens seen at each
        checkpoint) goes to the store."""
        if not (self.folder / "report.json").is_file():
            if self.prepare:
                self.prepare()
            sh(["transfusion", "train", "--preset", "tiny", "--out", self.folder, *self.train_args])
        record = self.store / "run.json"
        if not record.is_file():
            saved = json.loads((self.folder / "report.json").read_text())
            tokens = {str(step): json.loads((self.checkpoint(step) / "state.json").read_text())["tokens_seen"]
                      for step in sorted(set(self.plan.values()))}
            _write(record, {"model_parameters": saved["model_parameters"],
                            "active_parameters": saved.get("active_parameters", saved["model_parameters"]),
                            "tokens_seen": tokens})
        return self.folder

    def checkpoint(self, step: int) -> Path:
        return self.folder / "checkpoints" / f"step_{step:06d}"

    def record(self) -> dict:
        path = self.store / "run.json"
        if not path.is_file():
            self.trained()
        return json.loads(path.read_text())

    @staticmethod
    def eval_name(step: int, suite: str, n: int, guidance: float, how: tuple[str, int] | None) -> str:
        """The file name of one suite's report (in the store and under the run's eval/)."""
        sampled = suite in ("t2i", "interleaved")
        tag = f"_cfg{guidance:g}_{how[0]}{how[1]}" if sampled and how else f"_cfg{guidance:g}" if sampled else ""
        return f"step{step}_{suite}_n{n}{tag}.json"

    def score(self, step: int, suite: str, n: int, guidance: float, how: tuple[str, int] | None) -> dict:
        """`transfusion eval` of one suite at ``step``, from the store when it holds it."""
        stored = self.store / self.eval_name(step, suite, n, guidance, how)
        if not stored.is_file():
            out = self.trained() / "eval" / stored.name
            if not out.is_file():
                flags = ["--sampler", how[0], "--steps", str(how[1])] if suite in ("t2i", "interleaved") and how else []
                sh(["transfusion", "eval", self.checkpoint(step), "--suite", suite, "--n", str(n), *flags,
                    "--cfg", str(guidance), "--out", out])
            _write(stored, json.loads(out.read_text()))
        return json.loads(stored.read_text())


TEXT_STEPS = 4 if SMOKE else 1200  # (g)'s text-only pretraining (not counted in the image-training budget)
# (g)'s stand-in for a pretrained LLM: the tiny trunk trained on English text alone
TEXT_LM = Run("text_lm", ["data.text_fraction=1.0", "data.interleaved_fraction=0", f"autoencoder.name={ae_dir('kl')}",
                          f"train.steps={TEXT_STEPS}", "train.eval_samples=2", "train.sample_every=0"],
              {"final": TEXT_STEPS}, prepare=autoencoders)


def text_lm_folder() -> None:
    """The text LM as a transformers Llama folder (`transfusion export-hf`), for ``model.init_from``."""
    if not (RUNS / "text_lm_hf" / "config.json").is_file():
        sh(["transfusion", "export-hf", TEXT_LM.trained(), RUNS / "text_lm_hf"])


PREPARE = {"lmfusion": text_lm_folder}  # arm -> what must exist before it trains


def dataset_of(arm: str) -> str:
    """The dataset (a key of DATASETS) that ``arm`` trains on."""
    return next((d for d in DATASETS if f"data.dataset={DATASETS[d]}" in ARMS[arm]), "shapes")


def budget_plan(path: Path, budgets: tuple[float, ...], per_step, prepare=lambda: None) -> dict:
    """{budget: checkpoint step}, kept at ``path``: the first budget's steps (``budgets[0] /
    per_step()``, the FLOPs of a step) and their multiples for the larger budgets."""
    if path.is_file():
        return {float(k): v for k, v in json.loads(path.read_text()).items()}
    prepare()
    first = round(budgets[0] / per_step())
    plan = {b: first * round(b / budgets[0]) for b in budgets}
    _write(path, {str(k): v for k, v in plan.items()})
    return plan


def train(arm: str, seed: int, budgets: tuple[float, ...]) -> Run:
    """The run of ``arm`` with ``seed`` to the largest of ``budgets`` (multiples of the first),
    with a checkpoint at each: ``Run.plan`` is {budget: step of its checkpoint}."""
    name = f"{arm}_s{seed}_{max(budgets):.0e}"
    plan_path = STORE / name / "plan.json"

    def prepare():  # what the arm's training (and its FLOPs count) reads
        autoencoders(dataset_of(arm))
        PREPARE.get(arm, lambda: None)()

    plan = budget_plan(plan_path, budgets, lambda: flops_per_step(arm, seed), prepare)
    args = [*overrides(arm, seed), f"train.steps={max(plan.values())}", f"train.checkpoint_every={min(plan.values())}",
            "train.keep_checkpoints=0", "train.sample_every=0", "train.eval_samples=16"]
    return Run(name, args, plan, prepare=prepare)


def evaluate(run: Run, step: int, suites: list[str], guidance: float, how: tuple[str, int] | None,
             largest: bool = True) -> dict:
    """The scores of ``run`` at ``step``, merged over ``suites`` (t2i on ``T2I_N`` images at the
    largest budget, ``N`` below it; the other suites on ``N`` documents), with the run's
    training FLOPs at that step."""
    report: dict = {}
    for suite in suites:
        n = T2I_N if suite == "t2i" and largest else N
        report.update(run.score(step, suite, n, guidance, how))
        if suite == "t2i":
            report["t2i_n"] = n
    record = run.record()
    report["train_flops"] = 6 * record["active_parameters"] * record["tokens_seen"][str(step)]
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
        return [v for v in (fn(r) for r in self.reports[row][budget]) if v is not None]  # None: not measured there

    def stat(self, row: Row, budget: float, metric: str) -> tuple[float, float]:
        """(mean, sample standard deviation) over seeds."""
        v = self.values(row, budget, metric)
        if not v:
            return math.nan, math.nan
        return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0

    def compare(self, a: Row, b: Row, metric: str, budget: float | None = None) -> dict:
        """Whether ``a`` beats ``b`` on ``metric`` (at the largest budget by default): a difference
        counts only when it exceeds the spread, the sum of the two standard deviations."""
        budget = budget or max(self.budgets)
        (ma, sa), (mb, sb) = self.stat(a, budget, metric), self.stat(b, budget, metric)
        lower = self.metrics[metric][1]
        better = (mb - ma) if lower else (ma - mb)
        outcome = "inconclusive" if abs(ma - mb) <= sa + sb else ("better" if better > 0 else "worse")
        return {"metric": metric, "budget": budget, "a": (ma, sa), "b": (mb, sb), "outcome": outcome,
                "share": is_share(self.metrics, metric), "lower": lower}

    def shown(self, row: Row, budget: float, metric: str) -> str:
        """The table cell: mean +/- sd over seeds, accuracies as percentages."""
        return pm(*self.stat(row, budget, metric), is_share(self.metrics, metric))


def run_claim(name: str, title: str, rows: list[Row], suites: list[str], metrics: dict, budgets: tuple[float, ...],
              guidance: float = 3.0, seeds: tuple[int, ...] = SEEDS, note: str = "") -> Results:
    """Train and evaluate ``rows`` at every budget and seed; write the table and the plot.

    ``metrics``: {column label: (function of a report -> number, lower_is_better)}.
    Writes docs/results/NAME.md (a Markdown table, mean +/- sd over seeds) and NAME.png.
    """
    reports: dict = {row: {b: [] for b in budgets} for row in rows}
    for seed in seeds:  # every row of one seed first: a comparison exists after the first
        for row in rows:
            run = train(row.arm, seed, budgets)
            for b in budgets:
                reports[row][b].append(evaluate(run, run.plan[b], suites, guidance, row.how(), b == max(budgets)))
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
            cells += [results.shown(row, budget, m) for m in results.metrics]
            lines.append("| " + " | ".join(cells) + " |")
    seeds = len(next(iter(results.reports[results.rows[0]].values())))
    largest = [r for row in results.rows for r in results.reports[row][max(results.budgets)] if "t2i" in r]
    n_t2i = "/".join(sorted({str(r["t2i"]["settings"]["samples"]) for r in largest}, key=int)) or str(T2I_N)
    settings = [f"Mean +/- standard deviation over {seeds} training seeds. Text to image: {n_t2i} held-out "
                f"captions at the largest budget (FID against their {n_t2i} real images; 'FID 256' on the first 256), "
                f"{N} below it; captions, text and "
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


def pm(mean: float, sd: float, percent: bool = False) -> str:
    """``mean +/- sd`` with sd to two significant figures and the mean to the same decimal place;
    ``percent``: a share of 0-1 shown as a percentage."""
    if math.isnan(mean):
        return "-"
    unit = "%" if percent else ""
    if percent:
        mean, sd = 100 * mean, 100 * sd
    if not sd > 0:
        return f"{fmt(mean)}{unit} +/- 0"
    decimals = min(max(1 - math.floor(math.log10(float(f"{sd:.2g}"))), 0), 4)  # 9.9999 counts as 10
    return f"{mean:.{decimals}f}{unit} +/- {sd:.{decimals}f}{unit}"


def share(fn):
    """Mark a metric function as a share of 0-1 (an accuracy): tables show it as a percentage."""
    fn.share = True
    return fn


def is_share(metrics: dict, metric: str) -> bool:
    return getattr(metrics[metric][0], "share", False)


def t2i(key: str):
    return share(lambda r: r["t2i"]["accuracy"][key])


def i2t(key: str):
    return share(lambda r: r["i2t"]["accuracy"][key])


# FID on T2I_N images where a run was scored on that many (its largest budget), and on the first 256 everywhere
FID = {"FID": (lambda r: r["t2i"]["fid"] if r["t2i_n"] == T2I_N else None, True),
       "FID 256": (lambda r: r["t2i"].get("fid_256", r["t2i"]["fid"]), True)}
# the image-quality table of the ablations (b) and (c)
T2I_METRICS = {**FID, "t2i colour": (t2i("colour"), False), "t2i shape": (t2i("shape"), False),
               "t2i position": (t2i("position"), False)}
# images, captions and text at once: (a), (f) and (g)
ALL_METRICS = {**FID, "t2i colour": (t2i("colour"), False), "t2i position": (t2i("position"), False),
               "caption colour": (i2t("colour"), False), "caption CIDEr-D": (lambda r: r["i2t"]["cider_d"], False),
               "text ppl": (lambda r: r["text"]["english"]["perplexity"], True)}


def main(claim) -> None:
    """Entry point of each claim script: ``python experiments/paper_claims/X.py``."""
    sys.stdout.reconfigure(line_buffering=True)
    claim()
