"""The measured part of a docs page: what an experiment script writes below its marker line.

    write_measurements(ROOT / "docs" / "editing.md", "experiments/editing.py", lines, "# Editing images")

The guide above the marker is the page's own and stays; the measurements below it are rewritten
each time the script finishes.
"""

from __future__ import annotations

from pathlib import Path


def marker(script: str) -> str:
    return f"<!-- below: written by python {script} -->"


def write_measurements(page: Path, script: str, lines: list[str], title: str) -> None:
    """Rewrite ``page`` below ``script``'s marker with ``lines`` (a new page starts with ``title``), and print them."""
    mark = marker(script)
    guide = page.read_text().split(mark)[0] if page.is_file() else f"{title}\n\n"
    page.write_text(guide + mark + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
