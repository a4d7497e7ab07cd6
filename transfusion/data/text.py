"""Real English text for the text-only share of training, with no download.

The corpus is Python's own reference documentation as plain text, shipped with every
CPython in the ``pydoc_data.topics`` module (the text ``help("if")`` prints). We keep its
prose paragraphs and drop what is not English sentences: code examples (``>>>``),
grammar rules (``::=``), tables, heading underlines and symbol-heavy lines. What is left
is about 340,000 characters of technical English, one paragraph per line.

    corpus_text()                 # the whole cleaned corpus, e.g. to train a BPE tokenizer
    EnglishText("train")[0]       # Document([Text("...about 200 characters...")], kind="text")
"""

from __future__ import annotations

import re
from functools import lru_cache

from transfusion.data.document import Document, Text, split_rows

SPLIT_SEED = 0  # fixes the train/test permutation of chunks
PROSE_CHARACTERS = set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:'\"()?!-’“”_*/"
)
MAX_SYMBOL_FRACTION = 0.05  # more characters outside PROSE_CHARACTERS than this: code
FUNCTION_WORDS = re.compile(r"\b(the|a|an|is|are|of|to|and|in)\b", re.IGNORECASE)
HEADING_UNDERLINE = re.compile(r"[*=\-~^]+")


def _is_code_line(line: str) -> bool:
    return line.startswith((">>>", "...", "+", "|")) or "::=" in line


def _prose(paragraph: str) -> str | None:
    """One paragraph on one line with single spaces, or None if it is not English prose."""
    lines = [line.strip() for line in paragraph.split("\n")]
    lines = [line for line in lines if line and not HEADING_UNDERLINE.fullmatch(line)]
    if not lines or any(_is_code_line(line) for line in lines):
        return None
    text = " ".join(" ".join(lines).split())
    symbols = sum(ch not in PROSE_CHARACTERS for ch in text)
    if symbols > MAX_SYMBOL_FRACTION * len(text) or len(FUNCTION_WORDS.findall(text)) < 2:
        return None  # code, signatures, headings, "Note:"
    return text


@lru_cache(maxsize=1)
def corpus_text() -> str:
    """The cleaned corpus: English paragraphs of Python's documentation joined by "\\n"."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):  # sorted: the same text on every Python build of a version
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            text = _prose(paragraph)
            if text is not None:
                paragraphs.append(text)
    return "\n".join(paragraphs)


def split_into_chunks(text: str, chunk_chars: int) -> list[str]:
    """Consecutive pieces of ``text`` of at most ``chunk_chars`` characters, cut at
    whitespace (a single word longer than ``chunk_chars`` is cut inside the word)."""
    chunks = []
    start = 0
    while start < len(text):
        end = start + chunk_chars
        if end < len(text) and not text[end].isspace():
            space = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            if space > start:
                end = space
        chunk = text[start:end].strip()
        if chunk:
            chunks.append(chunk)
        start = end
    return chunks


class EnglishText:
    """Chunks of ``corpus_text()`` as text-only documents.

    Args:
        split: "train" or "test"; a fixed permutation (seed ``SPLIT_SEED``) of all chunks
            puts the last ``test_fraction`` of it in "test".
        chunk_chars: longest chunk in characters; chunks end at a word boundary, so most
            are a little shorter.

    Items are ``Document([Text(chunk)], kind="text")``.
    """

    def __init__(self, split: str = "train", chunk_chars: int = 200, test_fraction: float = 0.05):
        if chunk_chars < 1:
            raise ValueError(f"chunk_chars must be positive, got {chunk_chars}")
        chunks = split_into_chunks(corpus_text(), chunk_chars)
        picked = split_rows(len(chunks), split, test_fraction, SPLIT_SEED)
        self.split = split
        self.chunks = [chunks[i] for i in picked]

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> Document:
        return Document([Text(self.chunks[i])], kind="text")
