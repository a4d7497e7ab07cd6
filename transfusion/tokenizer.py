"""Tokenizers: byte-level (needs no file, the default) and BPE (HF ``tokenizers``).

Both share the special tokens BOS, EOS, BOI (begin of image), EOI (end of image) and PAD,
and serialise to one JSON string that is stored inside every checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from transfusion.hub import is_repo_id, local_folder

CONTROL_TOKENS = ("<bos>", "<eos>", "<boi>", "<eoi>", "<pad>")


class Tokenizer:
    """Common interface. Subclasses set ``vocab_size`` and the five special ids."""

    vocab_size: int
    bos_id: int
    eos_id: int
    boi_id: int
    eoi_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens are dropped."""
        raise NotImplementedError

    def to_json(self) -> str:
        raise NotImplementedError

    @property
    def special_ids(self) -> set[int]:
        return {self.bos_id, self.eos_id, self.boi_id, self.eoi_id, self.pad_id}


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes are ids 0..255; the special tokens follow."""

    def __init__(self):
        self.bos_id, self.eos_id, self.boi_id, self.eoi_id, self.pad_id = range(256, 261)
        self.vocab_size = 261

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return json.dumps({"type": "bytes"})


class BPETokenizer(Tokenizer):
    """A byte-level BPE from HF ``tokenizers``; the special tokens take the first ids."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        ids = [self.hf.token_to_id(t) for t in CONTROL_TOKENS]
        if any(i is None for i in ids):
            raise ValueError(f"BPE tokenizer lacks special tokens {CONTROL_TOKENS}")
        self.bos_id, self.eos_id, self.boi_id, self.eoi_id, self.pad_id = ids
        self.vocab_size = self.hf.get_vocab_size()

    @classmethod
    def extended(cls, hf_tokenizer) -> "BPETokenizer":
        """A pretrained model's HF tokenizer with the special tokens it lacks added at the end of
        its vocabulary (its own ids, and so its text, are unchanged)."""
        missing = [t for t in CONTROL_TOKENS if hf_tokenizer.token_to_id(t) is None]
        if missing:
            from tokenizers import AddedToken

            hf_tokenizer.add_special_tokens([AddedToken(t, special=True) for t in missing])
        return cls(hf_tokenizer)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(CONTROL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([i for i in ids if i not in self.special_ids])

    def to_json(self) -> str:
        return self.hf.to_str()


def tokenizer_from_json(text: str) -> Tokenizer:
    data = json.loads(text)
    if data.get("type") == "bytes":
        return ByteTokenizer()
    from tokenizers import Tokenizer as HFTokenizer

    return BPETokenizer(HFTokenizer.from_str(text))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer file written by ``save_tokenizer``, or a Hub repo id holding one as tokenizer.json."""
    if is_repo_id(path):
        path = local_folder(path, allow_patterns=["tokenizer.json"]) / "tokenizer.json"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return tokenizer_from_json(path.read_text())


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    Path(path).write_text(tokenizer.to_json())
