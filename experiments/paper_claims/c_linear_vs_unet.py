"""Claim (c): U-Net image layers beat linear ones when patches are large (paper Table 6:
16 patches per image, FID 16.1 vs 43.5).

    python experiments/paper_claims/c_linear_vs_unet.py

Both arms put an 8x8x4 latent into 16 tokens: linear patchifies 2x2 (one linear layer each
way); U-Net runs a timestep-conditioned down block to 4x4 first and an up block with skip
connections after the transformer. The U-Net's extra parameters count in its FLOPs, so at
equal FLOPs it takes fewer steps. DPM-Solver++ 25 steps, guidance 5 as in (a), whose extra
rows are these two runs: (c) trains nothing that (a) has not.
"""

from common import LONG, T2I_METRICS, Row, main, run_claim
from verdict import save_verdicts, verdicts

LINEAR, UNET = Row("linear", "linear 2x2"), Row("transfusion", "U-Net")


def claim():
    results = run_claim("c_linear_vs_unet", "(c) Image layers at 16 patches per image: linear vs U-Net",
                        [LINEAR, UNET], ["t2i"], T2I_METRICS, LONG, guidance=5.0)
    save_verdicts("c_linear_vs_unet", verdicts(results, UNET, LINEAR, ("U-Net", "linear"), [
        ("(c) U-Net image layers beat linear at 16 patches", "FID 16.1 vs 43.5 (Table 6)", "FID")]))
    return results


if __name__ == "__main__":
    main(claim)
