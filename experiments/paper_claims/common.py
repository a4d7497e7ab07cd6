"""Shared harness of the paper-claim experiments: arms, equal-FLOPs training, evaluation, plots.

Every arm is the ``tiny`` preset plus a few overrides, trained with the `transfusion train`
command on the embedded shapes data; all arms share one KL autoencoder (and the Chameleon
arm one VQ autoencoder) trained first with `transfusion autoencoder train`. An arm runs
until its cumulative training FLOPs (6 N D, N all parameters, D real tokens) reach the
largest budget, and keeps a checkpoint at each smaller budget: ``steps = budget / (6 N
tokens-per-step)``, with tokens per step measured on the run's own batches. Each checkpoint
is then scored with `transfusion eval`. Everything is cached under ``runs/claims/``: a rerun
skips what is done, and an interrupted one resumes.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = os.environ.get("CLAIMS_SMOKE") == "1"  # a minutes-long dry run of the whole pipeline
RUNS = Path(os.environ.get("CLAIMS_RUNS", ROOT / "runs" / ("claims_smoke" if SMOKE else "claims")))
DOCS = RUNS / "docs" if SMOKE else ROOT / "docs" / "results"
BUDGETS = (2e11, 4e11) if SMOKE else (1.5e13, 3.0e13)  # training FLOPs; each arm is evaluated at every budget
EVAL_N = 8 if SMOKE else 256  # held-out captions / images per suite
SAMPLER = ("dpm++", 25)  # for every DDPM arm (docs/sampling.md: ~DDPM-250 quality, 9x faster)
FLOW_SAMPLER = ("euler", 25)  # for every flow-matching arm
AE_KL, AE_VQ = RUNS / "ae_kl", RUNS / "ae_vq"

# arm name -> overrides of the tiny preset (the U-Net, bidirectional, capped arm is the baseline)
ARMS = {
    "transfusion": [],
    "chameleon": ["image.objective=tokens", f"image.autoencoder={AE_VQ}"],
    "linear": ["image.adapter=linear", "image.patch_size=2"],
    "linear_causal": ["image.adapter=linear", "image.patch_size=2", "image.attention=causal"],
    "no_noise_cap": ["diffusion.image_first_max_t=1000"],
    "flow": ["diffusion.objective=flow"],  # the paper's lambda = 5
    "flow_w1": ["diffusion.objective=flow", "diffusion.loss_weight=1"],
    "mot": ["model.mot=true"],
    # (g): the tiny trunk pretrained as a text-only LM (exported, then read back as a transformers folder)
    "lmfusion": [f"model.init_from={RUNS / 'text_lm_hf'}", "model.mot=true", "model.freeze_text=true"],
}


def sh(args: list[str]) -> None:
    """Run a command, echoing it as a user would type it."""
    print("$ " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT)


def autoencoders() -> None:
    if not (AE_KL / "autoencoder.json").is_file():
        sh(["transfusion", "autoencoder", "train", "--data", "shapes", "--out", AE_KL, "--steps", "20" if SMOKE else "1000"])
    if not (AE_VQ / "autoencoder.json").is_file():
        sh(["transfusion", "autoencoder", "train", "--vq", "--codebook-size", "512", "--data", "shapes",
            "--out", AE_VQ, "--steps", "20" if SMOKE else "1500"])


def overrides(arm: str) -> list[str]:
    extra = ARMS[arm]
    if not any(o.startswith("image.autoencoder=") for o in extra):
        extra = extra + [f"image.autoencoder={AE_KL}"]
    return extra


def _batches(arm: str, extra: list[str] = ()):
    """An arm's config, its model (untrained) and the builder of the batches its training sees."""
    from transfusion.autoencoders import load_autoencoder
    from transfusion.config import load_config
    from transfusion.data.stream import BatchBuilder, build_mixture
    from transfusion.model.transfusion import Transfusion
    from transfusion.train import build_tokenizer

    cfg = load_config("tiny", overrides=[*overrides(arm), *extra])
    mixture = build_mixture(cfg)
    tokenizer, ae = build_tokenizer(cfg, mixture), load_autoencoder(cfg.image.autoencoder)
    model = Transfusion.build(cfg.model, cfg.image, tokenizer, ae, cfg.train.seed)
    return cfg, model, BatchBuilder(cfg, mixture, tokenizer, ae, model.num_patches)


def flops_per_step(arm: str) -> float:
    """6 N x mean real tokens of the run's first 64 batches (the same batches training sees)."""
    cfg, model, builder = _batches(arm)
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


def train(arm: str, budgets: tuple[float, ...] = BUDGETS) -> tuple[Path, dict[float, int]]:
    """Train ``arm`` to the largest of ``budgets`` (multiples of the first), keeping a
    checkpoint at each; returns the run folder and {budget: step of its checkpoint}."""
    autoencoders()
    out = RUNS / (arm if budgets == BUDGETS else f"{arm}_{max(budgets):.0e}")
    plan_path = out / "plan.json"
    if plan_path.is_file():
        plan = {float(k): v for k, v in json.loads(plan_path.read_text()).items()}
    else:
        per_step = flops_per_step(arm)
        first = round(budgets[0] / per_step)
        plan = {b: first * round(b / budgets[0]) for b in budgets}
        out.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(json.dumps(plan))
    steps = max(plan.values())
    if not (out / "report.json").is_file():
        sh(["transfusion", "train", "--preset", "tiny", "--out", out, *overrides(arm), f"train.steps={steps}",
            f"train.checkpoint_every={min(plan.values())}", "train.keep_checkpoints=0", "train.sample_every=0",
            "train.eval_samples=16"])
    return out, plan


def sampler_of(key: str) -> tuple[str, int]:
    """The sampler of an arm key: ``ARM`` (its objective's default) or ``ARM@SAMPLER:STEPS``."""
    arm, _, how = key.partition("@")
    if how:
        name, steps = how.split(":")
        return name, int(steps)
    return FLOW_SAMPLER if "diffusion.objective=flow" in ARMS[arm] else SAMPLER


def evaluate(run: Path, step: int, suites: list[str], guidance: float = 3.0, how: tuple[str, int] = SAMPLER) -> dict:
    """`transfusion eval` of ``run`` at ``step``, one cached report per suite, merged; adds the
    run's training FLOPs at that step (6 N x tokens seen, from the checkpoint)."""
    report: dict = {}
    tag = "" if how in (SAMPLER, FLOW_SAMPLER) else f"_{how[0]}{how[1]}"
    for suite in suites:
        out = run / "eval" / f"step{step}_{suite}_cfg{guidance:g}{tag if suite == 't2i' else ''}.json"
        if not out.is_file():
            sampler, steps = how
            sh(["transfusion", "eval", run / "checkpoints" / f"step_{step:06d}", "--suite", suite, "--n", str(EVAL_N),
                "--sampler", sampler, "--steps", str(steps), "--cfg", str(guidance), "--out", out])
        report.update(json.loads(out.read_text()))
    state = json.loads((run / "checkpoints" / f"step_{step:06d}" / "state.json").read_text())
    saved = json.loads((run / "report.json").read_text())
    n_params = saved.get("active_parameters", saved["model_parameters"])  # MoT: one copy of each layer per token
    report["train_flops"] = 6 * n_params * state["tokens_seen"]
    return report


def run_claim(name: str, title: str, arms: dict[str, str], suites: list[str], metrics: dict, guidance: float = 3.0,
              longer: tuple[float, ...] = ()):
    """Train and evaluate ``arms`` ({arm: label}) at every budget; write the table and the plot.

    ``arms``: keys are arm names, or ``ARM@SAMPLER:STEPS`` for an arm's checkpoints sampled another way.
    ``metrics``: {column label: (function of a report -> number, lower_is_better)}.
    ``longer``: larger budgets, each a run of its own (its learning rate decays over it).
    Writes docs/results/NAME.md (a Markdown table) and docs/results/NAME.png (metric vs FLOPs).
    """
    results: dict[str, list[dict]] = {}
    budgets = BUDGETS + tuple(longer)
    for key in arms:
        arm = key.partition("@")[0]
        run, plan = train(arm)
        results[key] = [evaluate(run, plan[b], suites, guidance, sampler_of(key)) for b in BUDGETS]
        for budget in longer:
            run, plan = train(arm, (budget,))
            results[key].append(evaluate(run, plan[budget], suites, guidance, sampler_of(key)))

    DOCS.mkdir(parents=True, exist_ok=True)
    header = ["budget (FLOPs)", "arm", "step", "train FLOPs"] + list(metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, budget in enumerate(budgets):
        for arm, label in arms.items():
            r = results[arm][i]
            cells = [f"{budget:.2g}", label, str(r["step"]), f"{r['train_flops']:.3g}"]
            cells += [_fmt(fn(r)) for fn, _ in metrics.values()]
            lines.append("| " + " | ".join(cells) + " |")
    settings = next(iter(results.values()))[0]
    note = [f"{EVAL_N} held-out shapes documents per suite; " + "; ".join(
        f"{k}: " + ", ".join(f"{a}={b}" for a, b in settings[k]["settings"].items() if a not in ("step", "samples"))
        for k in ("t2i", "i2t") if k in suites)]
    table = "\n".join([f"### {title}", "", *lines, "", *note, ""])
    (DOCS / f"{name}.md").write_text(table)
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax, (label, (fn, lower)) in zip(axes.flat, metrics.items()):
        for arm, arm_label in arms.items():
            ax.plot([r["train_flops"] for r in results[arm]], [fn(r) for r in results[arm]], marker="o", label=arm_label)
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_title(f"{label} ({'lower' if lower else 'higher'} is better)", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(DOCS / f"{name}.png", dpi=100)
    plt.close(fig)
    return results


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}"


def t2i(key: str):
    return lambda r: r["t2i"]["accuracy"][key]


# the image-quality table of the ablations (b) and (c)
T2I_METRICS = {"FID": (lambda r: r["t2i"]["fid"], True),
               "t2i colour": (t2i("colour"), False),
               "t2i shape": (t2i("shape"), False),
               "t2i position": (t2i("position"), False)}


def i2t(key: str):
    return lambda r: r["i2t"]["accuracy"][key]


# images, captions and text at once: the table of (f) and (g)
ALL_METRICS = {"FID": (lambda r: r["t2i"]["fid"], True), "t2i colour": (t2i("colour"), False),
               "t2i position": (t2i("position"), False), "caption colour": (i2t("colour"), False),
               "caption CIDEr-D": (lambda r: r["i2t"]["cider_d"], False),
               "text ppl": (lambda r: r["text"]["english"]["perplexity"], True)}


def main(claim) -> None:
    """Entry point of each claim script: ``python experiments/paper_claims/X.py``."""
    sys.stdout.reconfigure(line_buffering=True)
    claim()
