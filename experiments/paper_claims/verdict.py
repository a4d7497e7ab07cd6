"""The verdict lines of the claims: each claim script's comparison of two rows, judged by the
spread over seeds, kept in docs/results/verdicts/ for run_all's table at the top of docs/results.md."""

from __future__ import annotations

import json

from common import DOCS, Results, Row, pm


def verdict_row(claim: str, paper: str, c: dict, a_label: str, b_label: str, at_least_matches: bool = False,
                why: str = "") -> dict:
    """One line of the verdict table from ``Results.compare``: reproduced when ``a`` is better than
    ``b`` beyond the spread (as the paper found), not reproduced when worse beyond it, else
    inconclusive; for a claim that ``a`` *at least matches* ``b``, a difference within the spread
    also reproduces it. ``why``: the reason as we read it, kept only where the claim is not reproduced."""
    verdict = {"better": "reproduced", "worse": "not reproduced"}.get(c["outcome"], "inconclusive")
    if at_least_matches and c["outcome"] == "inconclusive":
        verdict = "reproduced (within the spread)"
    share = c.get("share", False)
    ours = f"{a_label} {pm(*c['a'], share)} vs {b_label} {pm(*c['b'], share)} ({c['metric']}, {c['budget']:.2g} FLOPs)"
    return {"claim": claim, "paper": paper, "ours": ours, "verdict": verdict, "why": reason(verdict, why)}


def reason(verdict: str, why: str) -> str:
    """The reason shown beside a verdict: none where the claim is reproduced."""
    return "" if verdict.startswith("reproduced") else why


def verdicts(results: Results, a: Row, b: Row, names: tuple[str, str], lines: list[tuple[str, ...]],
             at_least_matches: bool = False) -> list[dict]:
    """The verdict lines of ``a`` against ``b`` (called ``names``), one per (claim, paper's figure,
    metric[, the reason where it is not reproduced])."""
    return [verdict_row(claim, paper, results.compare(a, b, metric), *names, at_least_matches, *why)
            for claim, paper, metric, *why in lines]


def save_verdicts(name: str, rows: list[dict]) -> None:
    """Keep a claim's verdict lines for run_all's table (docs/results/verdicts/NAME.json)."""
    folder = DOCS / "verdicts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
