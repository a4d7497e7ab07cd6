"""Claim (b): bidirectional attention among the patches of an image beats causal attention
(paper, 0.76B, linear 2x2 patches: FID 61.3 -> 20.3).

    python experiments/paper_claims/b_intra_image_attention.py

Both arms use the linear image layers with 2x2 latent patches (16 patches per image);
only the mask inside an image differs (`image.attention`).
"""

from common import main, run_claim, t2i


def claim():
    run_claim(
        "b_intra_image_attention", "(b) Intra-image attention: bidirectional vs causal (linear 2x2 patches)",
        {"linear": "bidirectional", "linear_causal": "causal"},
        ["t2i"],
        {"FID": (lambda r: r["t2i"]["fid"], True),
         "t2i colour": (t2i("colour"), False),
         "t2i shape": (t2i("shape"), False),
         "t2i position": (t2i("position"), False)},
    )


if __name__ == "__main__":
    main(claim)
