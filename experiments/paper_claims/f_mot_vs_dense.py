"""Comparison (f): Mixture-of-Transformers (a text and an image copy of every trunk layer) against
the dense trunk at equal training FLOPs, counted with the parameters a token uses.

    python experiments/paper_claims/f_mot_vs_dense.py

The MoT arm has twice the trunk parameters but the same active parameters per token, so at
equal FLOPs it takes the same number of steps. Same data, autoencoder, budgets and
evaluation as the four claims; DPM-Solver++ 25 steps, guidance 3.
"""

from common import ALL_METRICS, main, run_claim


def claim():
    run_claim("f_mot_vs_dense", "(f) Mixture-of-Transformers vs the dense trunk at equal training FLOPs",
              {"transfusion": "dense", "mot": "MoT"}, ["text", "t2i", "i2t"],
              ALL_METRICS)


if __name__ == "__main__":
    main(claim)
