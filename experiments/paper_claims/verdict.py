"""The verdict lines of the claims: each claim script's comparison of two rows, judged by the
spread over seeds, kept in docs/results/verdicts/ for run_all's table at the top of docs/results.md.

The rules, fixed before the runs they judge:

- **Superiority** ("A beats B"): reproduced only when A is better by more than the spread (the
  sum of the two standard deviations over seeds); not reproduced when A is worse by more than
  it; otherwise *inconclusive*.
- **At least matches** ("A at least matches B"): a margin is stated in advance (``MARGIN``, 5%
  of B's value). Reproduced when even the worse end of the spread keeps A within the margin of
  B (A's shortfall plus the spread is at most the margin); not reproduced when A falls short by
  more than the margin even at the better end; otherwise *inconclusive*.
- **Several attributes** (prompt following): each attribute judged as a superiority claim; the
  line names the attributes that go each way, and is reproduced only when A leads on at least
  one and trails on none, not reproduced when the reverse holds, else *mixed*.
"""

from __future__ import annotations

import json

from common import DOCS, Results, Row, pm

MARGIN = 0.05  # an "at least matches" claim allows A to be worse than B by 5% of B's value


def judged(c: dict, at_least_matches: bool = False, margin: float = MARGIN) -> str:
    """The verdict of one comparison (``Results.compare``) under the rules above."""
    (ma, sa), (mb, sb) = c["a"], c["b"]
    lead = (mb - ma) if c["lower"] else (ma - mb)  # > 0: a is better
    spread = sa + sb
    if not at_least_matches:
        return "reproduced" if lead > spread else "not reproduced" if lead < -spread else "inconclusive"
    allowed = margin * abs(mb)
    if lead - spread >= -allowed:
        return f"reproduced (within the {margin:.0%} margin)"
    if lead + spread < -allowed:
        return f"not reproduced (beyond the {margin:.0%} margin)"
    return "inconclusive"


def verdict_row(claim: str, paper: str, c: dict, a_label: str, b_label: str, at_least_matches: bool = False,
                why: str = "") -> dict:
    """One line of the verdict table from ``Results.compare``. ``why``: what a run measured that
    explains an outcome other than reproduced (or "not tested"), shown only then."""
    verdict = judged(c, at_least_matches)
    share = c.get("share", False)
    ours = f"{a_label} {pm(*c['a'], share)} vs {b_label} {pm(*c['b'], share)} ({c['metric']}, {c['budget']:.2g} FLOPs)"
    return {"claim": claim, "paper": paper, "ours": ours, "verdict": verdict, "why": reason(verdict, why)}


def reason(verdict: str, why: str) -> str:
    """The reason shown beside a verdict: none where the claim is reproduced."""
    return "" if verdict.startswith("reproduced") else why


def verdicts(results: Results, a: Row, b: Row, names: tuple[str, str], lines: list[tuple[str, ...]],
             at_least_matches: bool = False, budget: float | None = None) -> list[dict]:
    """The verdict lines of ``a`` against ``b`` (called ``names``), one per (claim, paper's figure,
    metric[, the reason where it is not reproduced]), at ``budget`` (default: the largest)."""
    return [verdict_row(claim, paper, results.compare(a, b, metric, budget), *names, at_least_matches, *why)
            for claim, paper, metric, *why in lines]


def by_outcome(comparisons: dict[str, dict]) -> tuple[list[str], list[str], list[str]]:
    """The names of ``comparisons`` (each A against B, as ``Results.compare``) where A is ahead beyond
    the spread, where B is, and where neither is."""
    ahead, behind, level = [], [], []
    for name, c in comparisons.items():
        outcome = judged(c)
        (ahead if outcome == "reproduced" else behind if outcome == "not reproduced" else level).append(name)
    return ahead, behind, level


def attributes_row(results: Results, a: Row, b: Row, names: tuple[str, str], claim: str, paper: str,
                   metrics: list[str], why: str = "", budget: float | None = None) -> dict:
    """One line for a claim over several attributes: each judged as superiority, named by the way it goes."""
    ahead, behind, level = by_outcome({metric: results.compare(a, b, metric, budget) for metric in metrics})
    verdict = ("reproduced" if ahead and not behind else "not reproduced" if behind and not ahead
               else "mixed" if ahead and behind else "inconclusive")
    budget = budget or max(results.budgets)
    cells = [f"{m} {pm(*results.stat(a, budget, m), True)} vs {pm(*results.stat(b, budget, m), True)}" for m in metrics]
    ours = (f"{names[0]} vs {names[1]} ({budget:.2g} FLOPs): " + "; ".join(cells)
            + f". {names[0]} ahead beyond the spread: {', '.join(ahead) or 'none'}; {names[1]} ahead: "
            f"{', '.join(behind) or 'none'}; within the spread: {', '.join(level) or 'none'}")
    return {"claim": claim, "paper": paper, "ours": ours, "verdict": verdict, "why": reason(verdict, why)}


def save_verdicts(name: str, rows: list[dict]) -> None:
    """Keep a claim's verdict lines for run_all's table (docs/results/verdicts/NAME.json)."""
    folder = DOCS / "verdicts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
