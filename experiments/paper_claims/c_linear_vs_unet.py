"""Claim (c): U-Net image layers beat linear ones when patches are large (paper Table 6:
16 patches per image, FID 16.1 vs 43.5).

    python experiments/paper_claims/c_linear_vs_unet.py

Both arms put an 8x8x4 latent into 16 tokens: linear patchifies 2x2 (one linear layer each
way); U-Net runs a timestep-conditioned down block to 4x4 first and an up block with skip
connections after the transformer.
"""

from common import T2I_METRICS, main, run_claim


def claim():
    run_claim("c_linear_vs_unet", "(c) Image layers at 16 patches per image: linear vs U-Net",
              {"linear": "linear 2x2", "transfusion": "U-Net"}, ["t2i"], T2I_METRICS)


if __name__ == "__main__":
    main(claim)
