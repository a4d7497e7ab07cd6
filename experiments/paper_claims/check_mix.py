"""The data mix of the claims, checked: English text per FLOP in the Transfusion and Chameleon arms.

    python experiments/paper_claims/check_mix.py     # writes docs/results/mix_check.md

By documents (round 1: ``data.text_fraction=0.1`` of documents) Chameleon's images take 64
positions to Transfusion's 16, so per FLOP it trains on less text; by tokens (the paper's
1:1 text : image-caption mix, ``data.mix_by=tokens data.text_fraction=0.5``) both arms should
see the same English text per FLOP, within 5%: on the shapes, the MNIST digits and the emoji.
About 3 minutes here once the six autoencoders exist (training them when missing: 8 more).
"""

from __future__ import annotations

from common import DOCS, PROTOCOL, SMOKE, autoencoders, text_per_flop

BATCHES = 4 if SMOKE else 128  # a text document fills most of a row: fewer batches leave a few % of noise

ROUND1 = {"by documents, text 10% (round 1)": ["data.mix_by=documents", "data.text_fraction=0.1"]}
ROUND2 = {"by tokens, text 50% (the paper's 1:1; round 2)": PROTOCOL}
# dataset -> (its Transfusion arms, its Chameleon arm); the real-image datasets only under round 2's mix
DATA = {"shapes": (("linear", "transfusion"), "chameleon"), "mnist": (("mnist_linear",), "mnist_chameleon"),
        "emoji": (("emoji_linear",), "emoji_chameleon")}


def main() -> None:
    lines = ["# The data mix: English text per FLOP in the two arms of claim (a)", "",
             f"Made by `python experiments/paper_claims/check_mix.py`: each arm's first {BATCHES} training batches; "
             "text = positions of text-only documents, FLOPs = 6 N x tokens.", "",
             "| data | mix | arm | text positions / step | tokens / step | text share | text / GFLOP | Chameleon / this arm |",
             "|---|---|---|---|---|---|---|---|"]
    for data, (arms, chameleon) in DATA.items():
        autoencoders(data)
        for label, extra in ({**ROUND1, **ROUND2} if data == "shapes" else ROUND2).items():
            r = {arm: text_per_flop(arm, extra, BATCHES) for arm in (*arms, chameleon)}
            for arm, m in r.items():
                ratio = r[chameleon]["text_per_gflop"] / m["text_per_gflop"]
                lines.append(f"| {data} | {label} | {arm} | {m['text_per_step']:.0f} | {m['tokens_per_step']:.0f} | "
                             f"{m['text_per_step'] / m['tokens_per_step']:.3f} | {m['text_per_gflop']:.2f} | "
                             f"{'-' if arm == chameleon else f'{ratio:.3f}'} |")
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "mix_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
