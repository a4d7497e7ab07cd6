"""Claim (a): at equal training FLOPs, Transfusion (diffusion on continuous latents) beats
Chameleon (next-token prediction on VQ image tokens) on images, and matches it on text.

    python experiments/paper_claims/a_transfusion_vs_chameleon.py

Same transformer, data, tokenizer and optimiser; Chameleon's images are 8x8 = 64 codes of a
512-entry VQ autoencoder (as fine as the KL latents Transfusion diffuses, which its U-Net
layers fold into 16 patches). Guidance 5 for both, as in the paper's comparison. A third,
larger budget (4x the first: 6e13 FLOPs) is a separate run per model.
"""

from common import BUDGETS, i2t, main, run_claim, t2i


def claim():
    run_claim(
        "a_transfusion_vs_chameleon", "(a) Transfusion vs Chameleon at equal training FLOPs",
        {"transfusion": "Transfusion", "chameleon": "Chameleon (VQ tokens)"},
        ["text", "t2i", "i2t"],
        {"FID": (lambda r: r["t2i"]["fid"], True),
         "t2i colour": (t2i("colour"), False),
         "t2i position": (t2i("position"), False),
         "caption colour": (i2t("colour"), False),
         "caption CIDEr-D": (lambda r: r["i2t"]["cider_d"], False),
         "text ppl": (lambda r: r["text"]["english"]["perplexity"], True),
         "caption ppl": (lambda r: r["text"]["captions"]["perplexity"], True)},
        guidance=5.0,
        longer=(4 * BUDGETS[0],),  # 6e13
    )


if __name__ == "__main__":
    main(claim)
