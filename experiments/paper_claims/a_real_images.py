"""Claim (a) again on real images: Transfusion vs Chameleon on the 5,000 MNIST digits.

    python experiments/paper_claims/a_real_images.py

The same two arms as (a) (Transfusion with linear 2x2 patches and bidirectional attention;
Chameleon with 64 VQ codes per image), on handwritten digits captioned "a handwritten
seven", with a KL and a VQ autoencoder trained on the digits, mixed 1:1 by tokens with real
English text. Scored by FID against all 500 held-out digits (and the first 256), by the
digit classifier's accuracy on the generated digits (`metrics/digits.py`; its own accuracy
on real test digits beside), by whether the caption names the right digit, and CIDEr-D.
Both arms are sampled fast (DPM-Solver++ 25 for Transfusion); guidance 5.
"""

from common import FID, SHORT, Row, i2t, main, run_claim, save_verdicts, t2i, verdicts

TRANSFUSION = Row("mnist_linear", "Transfusion (linear 2x2, DPM++ 25)")
CHAMELEON = Row("mnist_chameleon", "Chameleon (VQ tokens)")
METRICS = {**FID,
           "digit of the image": (t2i("digit"), False),
           "digit in the caption": (i2t("digit"), False),
           "caption CIDEr-D": (lambda r: r["i2t"]["cider_d"], False),
           "text ppl": (lambda r: r["text"]["english"]["perplexity"], True)}


def claim():
    results = run_claim("a_real_images", "(a) on real images: Transfusion vs Chameleon on MNIST digits at equal FLOPs",
                        [TRANSFUSION, CHAMELEON], ["text", "t2i", "i2t"], METRICS, SHORT, guidance=5.0,
                        note="The digit classifier reads 93%+ of real held-out digits right (its accuracy is in each report).")
    save_verdicts("a_real_images", verdicts(results, TRANSFUSION, CHAMELEON, ("Transfusion", "Chameleon"), [
        ("(a) on real digits: Transfusion's images beat Chameleon's", "FID 16.8 vs 29.6 (COCO, Table 3)", "FID"),
        ("(a) on real digits: the right digit drawn", "(no digit figure; CLIP 25.5 vs 24.3)", "digit of the image"),
        ("(a) on real digits: captioning", "CIDEr 27.2 vs 18.0 (COCO, Table 3)", "digit in the caption"),
    ]))
    return results


if __name__ == "__main__":
    main(claim)
