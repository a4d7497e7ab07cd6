"""The data mix of the claims, checked: English text per FLOP in the Transfusion and Chameleon arms.

    python experiments/paper_claims/check_mix.py     # about 3 minutes; writes docs/results/mix_check.md

By documents (round 1: ``data.text_fraction=0.1`` of documents) Chameleon's images take 64
positions to Transfusion's 16, so per FLOP it trains on less text; by tokens (the paper's
1:1 text : image-caption mix, ``data.mix_by=tokens data.text_fraction=0.5``) both arms should
see the same English text per FLOP, within 5%.
"""

from __future__ import annotations

from common import DOCS, PROTOCOL, SMOKE, autoencoders, text_per_flop

BATCHES = 4 if SMOKE else 128  # a text document fills most of a row: fewer batches leave a few % of noise

MIXES = {"by documents, text 10% (round 1)": ["data.mix_by=documents", "data.text_fraction=0.1"],
         "by tokens, text 50% (the paper's 1:1; round 2)": PROTOCOL}


def main() -> None:
    autoencoders()
    lines = ["# The data mix: English text per FLOP in the two arms of claim (a)", "",
             f"Made by `python experiments/paper_claims/check_mix.py`: the `tiny` arms' first {BATCHES} training batches; "
             "text = positions of text-only documents, FLOPs = 6 N x tokens.", "",
             "| mix | arm | text positions / step | tokens / step | text share | text / GFLOP | Chameleon / this arm |",
             "|---|---|---|---|---|---|---|"]
    for label, extra in MIXES.items():
        r = {arm: text_per_flop(arm, extra, BATCHES) for arm in ("linear", "transfusion", "chameleon")}
        for arm, m in r.items():
            ratio = r["chameleon"]["text_per_gflop"] / m["text_per_gflop"]
            lines.append(f"| {label} | {arm} | {m['text_per_step']:.0f} | {m['tokens_per_step']:.0f} | "
                         f"{m['text_per_step'] / m['tokens_per_step']:.3f} | {m['text_per_gflop']:.2f} | "
                         f"{'-' if arm == 'chameleon' else f'{ratio:.3f}'} |")
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "mix_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
