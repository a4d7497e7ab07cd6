"""CIDEr-D (Vedantam et al., 2015), the captioning metric of the COCO evaluation.

For each n = 1..4, every caption becomes a TF-IDF vector over its n-grams: the count of
each n-gram, times log(number of images / number of images whose references contain it).
A candidate scores, against each of its references, the cosine of the two vectors with
the candidate's values clipped to the reference's (so repeating a word gains nothing),
times a Gaussian penalty exp(-(len_c - len_r)^2 / (2 sigma^2)) on the length difference
(sigma = 6). Those are averaged over references, then over n with equal weights, and
multiplied by 10. The document frequencies come from the references of the whole set, so
a score depends on the set it is computed in.

Text is lower-cased and split on anything that is not a letter, digit or apostrophe
(the COCO code uses the Stanford PTB tokenizer, which needs Java).
"""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"[a-z0-9']+")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def cider_d(candidates: list[str], references: list[list[str]], max_n: int = 4, sigma: float = 6.0) -> tuple[float, list[float]]:
    """The corpus CIDEr-D and each candidate's score; ``references[i]`` are candidate i's references."""
    if len(candidates) != len(references) or not candidates:
        raise ValueError(f"need one reference list per candidate, got {len(candidates)} and {len(references)}")
    if any(not refs for refs in references):
        raise ValueError("every candidate needs at least one reference caption")
    cand_words = [tokenize(c) for c in candidates]
    ref_words = [[tokenize(r) for r in refs] for refs in references]
    log_images = math.log(len(candidates))
    doc_freq: Counter = Counter()
    for refs in ref_words:
        doc_freq.update({g for words in refs for n in range(1, max_n + 1) for g in ngrams(words, n)})

    def vector(words: list[str], n: int) -> tuple[dict, float]:
        vec = {g: c * (log_images - math.log(max(1.0, doc_freq[g]))) for g, c in ngrams(words, n).items()}
        return vec, math.sqrt(sum(v * v for v in vec.values()))

    scores = []
    for cand, refs in zip(cand_words, ref_words):
        per_n = [0.0] * max_n
        for n in range(1, max_n + 1):
            c_vec, c_norm = vector(cand, n)
            for ref in refs:
                r_vec, r_norm = vector(ref, n)
                if c_norm == 0 or r_norm == 0:
                    continue
                dot = sum(min(v, r_vec[g]) * r_vec[g] for g, v in c_vec.items() if g in r_vec)
                penalty = math.exp(-((len(cand) - len(ref)) ** 2) / (2 * sigma**2))
                per_n[n - 1] += penalty * dot / (c_norm * r_norm)
            per_n[n - 1] /= len(refs)
        scores.append(10.0 * sum(per_n) / max_n)
    return sum(scores) / len(scores), scores
