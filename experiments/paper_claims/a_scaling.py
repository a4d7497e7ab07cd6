"""The paper's scaling figure in small: Transfusion and Chameleon at three model sizes, each
metric against training FLOPs, and the parity FLOP ratio.

    python experiments/paper_claims/a_scaling.py

Sizes S (width 128, 2 layers), M (`tiny`: 256, 4) and L (320, 6), every size trained on the
same number of tokens as M's runs of (a) (so FLOPs grow with the parameters, as in the
paper's figure; L reaches about 2.2e14), with a checkpoint at a quarter of the run. M's points
are seed 0 of (a); S and L are one seed each. Transfusion is (a)'s linear 2x2 arm; images of
every point are sampled with DPM-Solver++ 25 (DDPM 250 at every point would cost hours here),
guidance 5. The parity FLOP ratio: Chameleon's FLOPs at its best score over the FLOPs at which
Transfusion first reaches that score (interpolated on log FLOPs between its points, the best
so far at each), the paper's "Transfusion matches Chameleon with 34x less compute".
"""

from __future__ import annotations

import math

from common import DOCS, FAST, FID, LONG, evaluate, flops_per_step, fmt, i2t, is_share, main, t2i, train
from verdict import reason, save_verdicts

SIZES = {"S": "_S", "M": "", "L": "_L"}
METRICS = {"FID 256": (FID["FID 256"][0], True),  # FID on 1,000 exists at the largest budget only
           "t2i colour": (t2i("colour"), False),
           "caption CIDEr-D": (lambda r: r["i2t"]["cider_d"], False),
           "caption colour": (i2t("colour"), False),
           "text ppl": (lambda r: r["text"]["english"]["perplexity"], True)}
MODELS = {"Transfusion": "linear", "Chameleon": "chameleon"}


def show(label: str, value: float) -> str:
    return f"{fmt(100 * value)}%" if is_share(METRICS, label) else fmt(value)


def points(model: str) -> list[dict]:
    """Every checkpoint of every size of ``model``: {size, flops, report}."""
    out = []
    for size, suffix in SIZES.items():
        arm = MODELS[model] + suffix
        scale = 1.0 if not suffix else flops_per_step(arm) / flops_per_step(MODELS[model])  # same tokens as M
        budgets = tuple(b * scale for b in LONG) if suffix else LONG
        run = train(arm, 0, tuple(float(f"{b:.3g}") for b in budgets))
        params = run.record()["model_parameters"]
        for b in sorted(run.plan):
            report = evaluate(run, run.plan[b], ["text", "t2i", "i2t"], 5.0, FAST if model == "Transfusion" else None,
                              b == max(run.plan))
            out.append({"size": size, "flops": report["train_flops"], "params": params, "report": report})
    return out


def parity(transfusion: list[dict], chameleon: list[dict], fn, lower: bool) -> dict:
    """Chameleon's best score and its FLOPs, and the FLOPs at which Transfusion's best score so
    far first reaches it (None: never; ``bound``: already at its first point, an upper bound)."""
    sign = 1 if lower else -1  # in "sign" space lower is better
    best = min(chameleon, key=lambda p: sign * fn(p["report"]))
    target = sign * fn(best["report"])
    result = {"target": sign * target, "chameleon_flops": best["flops"], "reached": None, "bound": False}
    so_far = []  # (log FLOPs, best score so far)
    for p in sorted(transfusion, key=lambda p: p["flops"]):
        score = min([sign * fn(p["report"])] + [b for _, b in so_far[-1:]])
        so_far.append((math.log(p["flops"]), score))
        if score <= target:
            if len(so_far) == 1:
                return {**result, "reached": p["flops"], "bound": True}
            (x0, y0), (x1, y1) = so_far[-2:]  # y0 > target >= y1
            return {**result, "reached": math.exp(x0 + (target - y0) * (x1 - x0) / (y1 - y0))}
    return result


def claim():
    curves = {model: points(model) for model in MODELS}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.6 * len(METRICS), 3.4))
    lines = ["### The scaling figure in small: Transfusion and Chameleon at three sizes", "",
             "| model | size | parameters | steps | train FLOPs | " + " | ".join(METRICS) + " |",
             "|" + "---|" * (5 + len(METRICS))]
    for model, pts in curves.items():
        for p in pts:
            r = p["report"]
            lines.append(f"| {model} | {p['size']} | {p['params'] / 1e6:.2f}M | {r['step']} | {p['flops']:.3g} | "
                         + " | ".join(show(label, fn(r)) for label, (fn, _) in METRICS.items()) + " |")
    parity_lines = ["", "Parity FLOP ratio (Chameleon's FLOPs at its best score / Transfusion's FLOPs to reach it):", "",
                    "| metric | Chameleon's best | at FLOPs | Transfusion reaches it at | parity FLOP ratio |",
                    "|---|---|---|---|---|"]
    ratios = {}
    for ax, (label, (fn, lower)) in zip(axes, METRICS.items()):
        for model, pts in curves.items():
            for size in SIZES:
                mine = sorted((p for p in pts if p["size"] == size), key=lambda p: p["flops"])
                ax.plot([p["flops"] for p in mine], [fn(p["report"]) for p in mine], marker="o",
                        color="C0" if model == "Transfusion" else "C1", alpha=0.4 + 0.3 * list(SIZES).index(size),
                        label=f"{model} {size}")
        ax.set_xscale("log")
        if label in ("FID 256", "text ppl"):
            ax.set_yscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_title(f"{label} ({'lower' if lower else 'higher'} is better)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        p = parity(curves["Transfusion"], curves["Chameleon"], fn, lower)
        if p["reached"] is None:
            ratio, reached = f"< {p['chameleon_flops'] / max(q['flops'] for q in curves['Transfusion']):.2g} (not reached)", "-"
        else:
            ratios[label] = p["chameleon_flops"] / p["reached"]
            ratio = ("> " if p["bound"] else "") + f"{ratios[label]:.2g}"
            reached = ("<= " if p["bound"] else "") + f"{p['reached']:.3g}"
        parity_lines.append(f"| {label} | {show(label, p['target'])} | {p['chameleon_flops']:.3g} | {reached} | {ratio} |")
    axes[0].legend(fontsize=6)
    fig.suptitle("Transfusion vs Chameleon at sizes S, M, L (one seed; DPM-Solver++ 25; guidance 5)", fontsize=10)
    fig.tight_layout()
    DOCS.mkdir(parents=True, exist_ok=True)
    fig.savefig(DOCS / "a_scaling.png", dpi=100)
    plt.close(fig)
    table = "\n".join(lines + parity_lines + ["", "Runs: linear[_S|_L]_s0_*, chameleon[_S|_L]_s0_* "
                                               "(scores in experiments/paper_claims/scores/).", ""])
    (DOCS / "a_scaling.md").write_text(table)
    print(table)
    fid = ratios.get("FID 256")
    save_verdicts("a_scaling", [{
        "claim": "(a) parity FLOP ratio on FID", "paper": "34x (Transfusion matches Chameleon's FID with 34x less compute)",
        "ours": f"{fid:.2g}x" if fid else "Transfusion does not reach Chameleon's best FID within its largest run",
        "verdict": (verdict := "reproduced" if fid and fid > 1 else "not reproduced"),
        "why": reason(verdict, "Chameleon keeps the better FID at every size (0.6M to 8.2M parameters), and the gap at "
                               "the end of the runs does not close with size over this range (1/20 of the paper's smallest model)")}])


if __name__ == "__main__":
    main(claim)
