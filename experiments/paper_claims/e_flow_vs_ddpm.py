"""Comparison (e): rectified flow (velocity target, logit-normal t) against the paper's DDPM at
equal training FLOPs, and flow's loss weight lambda (the paper's 5 for DDPM, against 1).

    python experiments/paper_claims/e_flow_vs_ddpm.py

Same transformer, data, tokenizer, autoencoder and budgets as the four claims; only
`diffusion.objective` (and for one arm `diffusion.loss_weight`) differ. DDPM is sampled with
DPM-Solver++ 25 steps and with the paper's DDPM 250, flow with Euler 25 steps; guidance 3 for all.
"""

from common import i2t, main, run_claim, t2i


def claim():
    run_claim("e_flow_vs_ddpm", "(e) Flow matching vs DDPM at equal training FLOPs",
              {"transfusion": "DDPM (DPM++ 25)", "transfusion@ddpm:250": "DDPM (DDPM 250)", "flow": "flow, lambda 5 (Euler 25)", "flow_w1": "flow, lambda 1 (Euler 25)"},
              ["t2i", "i2t"],
              {"FID": (lambda r: r["t2i"]["fid"], True), "t2i colour": (t2i("colour"), False),
               "t2i shape": (t2i("shape"), False), "t2i position": (t2i("position"), False),
               "caption colour": (i2t("colour"), False), "caption CIDEr-D": (lambda r: r["i2t"]["cider_d"], False)})


if __name__ == "__main__":
    main(claim)
