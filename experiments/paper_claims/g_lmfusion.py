"""Comparison (g): starting from a pretrained language model with its text weights frozen
(LMFusion) against a model trained from scratch, at equal image-training FLOPs.

    python experiments/paper_claims/g_lmfusion.py

A stand-in for a pretrained LLM: the tiny trunk trained as a text-only LM on the built-in
English text (`data.text_fraction=1`), written as a transformers Llama folder by
`transfusion export-hf` and read back by `model.init_from`. The LMFusion arm (MoT, text copies
frozen, image copies starting as copies of them) then trains on the usual mixture, as do
the from-scratch arms (dense and MoT). The point: the pretrained model's text perplexity is
kept exactly, and image quality at equal FLOPs.
"""

from common import ALL_METRICS, N, SHORT, TEXT_LM, TEXT_STEPS, Row, main, pm, run_claim
from verdict import save_verdicts, verdicts


def pretrain_text_lm() -> float:
    """The pretrained text LM's English perplexity (text/test, ``N`` documents)."""
    english = TEXT_LM.score(TEXT_STEPS, "text", N, 3.0, None)["text"]["english"]["perplexity"]
    print(f"the pretrained text LM: English perplexity {english:.2f} (text/test, {N} documents)")
    return english


DENSE, MOT, LMFUSION = Row("transfusion", "dense, from scratch"), Row("mot", "MoT, from scratch"), \
    Row("lmfusion", "LMFusion (frozen text)")


def kept_text(results, english: float) -> dict:
    """The frozen text model keeps the pretrained LM's perplexity (within 1%) at every seed."""
    budget = max(results.budgets)
    values = results.values(LMFUSION, budget, "text ppl")
    kept = all(abs(v / english - 1) <= 0.01 for v in values)
    return {"claim": "(g) LMFusion keeps the pretrained text model", "paper": "text ability kept exactly (frozen text weights)",
            "ours": f"LMFusion {pm(*results.stat(LMFUSION, budget, 'text ppl'))} vs the LM alone {english:.3g} "
                    f"(text ppl, {budget:.2g} FLOPs); MoT from scratch {pm(*results.stat(MOT, budget, 'text ppl'))}",
            "verdict": "reproduced" if kept else "not reproduced"}


def claim():
    english = pretrain_text_lm()
    results = run_claim(
        "g_lmfusion", "(g) LMFusion start (pretrained text LM, frozen) vs from scratch at equal image-training FLOPs",
        [DENSE, MOT, LMFUSION], ["text", "t2i", "i2t"], ALL_METRICS, SHORT,
        note=f"The pretrained text LM alone: English perplexity {english:.3g}.")
    save_verdicts("g_lmfusion", [
        kept_text(results, english),
        *verdicts(results, LMFUSION, MOT, ("LMFusion", "MoT from scratch"), [
            ("(g) LMFusion images at least match from scratch", "better images at ~1/2 the FLOPs (LMFusion)", "FID",
             "not tested")],
            at_least_matches=True),
    ])
    return results


if __name__ == "__main__":
    main(claim)
