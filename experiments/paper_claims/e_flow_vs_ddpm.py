"""Comparison (e): rectified flow (velocity target, logit-normal t) against the paper's DDPM at
equal training FLOPs.

    python experiments/paper_claims/e_flow_vs_ddpm.py

Same transformer (U-Net image layers), data, tokenizer, autoencoder and budgets; only
`diffusion.objective` differs (flow with the paper's lambda = 5). DDPM is sampled with
DPM-Solver++ 25 steps, flow with Euler 25 steps; guidance 3 for both.
"""

from common import FID, SHORT, Row, i2t, main, run_claim, t2i
from verdict import save_verdicts, verdicts

DDPM, FLOW = Row("transfusion", "DDPM (DPM++ 25)"), Row("flow", "flow, lambda 5 (Euler 25)")


def claim():
    results = run_claim("e_flow_vs_ddpm", "(e) Flow matching vs DDPM at equal training FLOPs", [DDPM, FLOW],
                        ["t2i", "i2t"],
                        {**FID, "t2i colour": (t2i("colour"), False), "t2i shape": (t2i("shape"), False),
                         "t2i position": (t2i("position"), False), "caption colour": (i2t("colour"), False),
                         "caption CIDEr-D": (lambda r: r["i2t"]["cider_d"], False)},
                        SHORT)
    save_verdicts("e_flow_vs_ddpm", verdicts(results, FLOW, DDPM, ("flow", "DDPM"), [
        ("(e) flow matching at least matches DDPM", "adopted by BAGEL, JanusFlow, SD3 (no controlled Transfusion figure)",
         "FID")], at_least_matches=True))
    return results


if __name__ == "__main__":
    main(claim)
