"""Tokenizers: byte-level (needs no file, the default) and BPE (HF ``tokenizers``).

Both share the special tokens BOS, EOS, BOI (begin of image), EOI (end of image) and PAD,
and serialise to one JSON string that is stored inside every checkpoint. A pretrained model's
tokenizer (``BPETokenizer.extended``) keeps that model's own BOS / EOS / PAD tokens and its
padded vocabulary; its JSON then wraps the ``tokenizers`` file with those facts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from transfusion.hub import is_repo_id, local_folder

CONTROL_TOKENS = ("<bos>", "<eos>", "<boi>", "<eoi>", "<pad>")
ROLES = ("bos", "eos", "boi", "eoi", "pad")  # what each of CONTROL_TOKENS does, in the same order


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

    @property
    def new_ids(self) -> tuple[int, ...]:
        """Ids of the tokens this library added to a pretrained tokenizer (none for its own)."""
        return ()


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

    def to_hf(self):
        """The same tokenizer as a ``tokenizers.Tokenizer`` (for transformers' ``AutoTokenizer``):
        a byte-level BPE without merges whose byte tokens have the byte values as ids, then the
        special tokens with the same ids as here."""
        from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

        # GPT-2's byte -> character map, the one HF's ByteLevel pre-tokenizer and decoder use
        printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
        spare = iter(range(256, 512))
        chars = [chr(b) if b in printable else chr(next(spare)) for b in range(256)]
        hf = HFTokenizer(models.BPE(vocab={c: b for b, c in enumerate(chars)}, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([AddedToken(t, special=True) for t in CONTROL_TOKENS])  # ids 256..260
        return hf


class BPETokenizer(Tokenizer):
    """A byte-level BPE from HF ``tokenizers``. Trained here, its special tokens are CONTROL_TOKENS
    with the first ids; a pretrained one (``extended``) names its own in ``specials`` (role -> token).

    ``vocab_size`` is the model's vocabulary: at least the tokenizer's, more where the pretrained
    embedding is padded past it (Qwen2.5: 151,936 rows for 151,665 tokens); ``added``: the tokens
    added to a pretrained tokenizer (their rows start fresh and train under LMFusion).
    """

    def __init__(self, hf_tokenizer, specials: dict[str, str] | None = None, vocab_size: int = 0,
                 added: Iterable[str] = ()):
        self.hf = hf_tokenizer
        self.specials = dict(zip(ROLES, CONTROL_TOKENS)) if specials is None else dict(specials)
        ids = {role: self.hf.token_to_id(self.specials.get(role, "")) for role in ROLES}
        if any(i is None for i in ids.values()):
            raise ValueError(f"BPE tokenizer lacks special tokens {self.specials} (roles {', '.join(ROLES)})")
        self.bos_id, self.eos_id, self.boi_id, self.eoi_id, self.pad_id = (ids[role] for role in ROLES)
        self.vocab_size = max(self.hf.get_vocab_size(), vocab_size)
        self.added = tuple(added)
        # text is always text: "<boi>" typed by a user is the five characters, never the control token
        # (the control ids are placed by the sequence format itself, data/packing.py)
        self.hf.encode_special_tokens = True

    @classmethod
    def extended(cls, hf_tokenizer, specials: dict[str, str] | None = None, vocab_size: int = 0) -> "BPETokenizer":
        """A pretrained model's HF tokenizer with its own special tokens (``specials``, role ->
        token: its BOS, EOS, PAD where it has them) and this library's for the other roles, added
        after its last token where it lacks them (its own ids, and so its text, are unchanged).
        ``vocab_size``: the rows of its embedding; added tokens fall in a padded embedding's spare
        rows when there are enough, else after them."""
        names = {role: (specials or {}).get(role) or own for role, own in zip(ROLES, CONTROL_TOKENS)}
        missing = [t for t in dict.fromkeys(names.values()) if hf_tokenizer.token_to_id(t) is None]
        if missing:
            from tokenizers import AddedToken

            hf_tokenizer.add_special_tokens([AddedToken(t, special=True) for t in missing])
        return cls(hf_tokenizer, names, vocab_size, missing)

    @property
    def new_ids(self) -> tuple[int, ...]:
        return tuple(self.hf.token_to_id(t) for t in self.added)

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
        """The ``tokenizers`` file itself, or for a pretrained one that file wrapped with its
        special tokens, vocabulary size and added tokens."""
        own = self.specials == dict(zip(ROLES, CONTROL_TOKENS)) and not self.added
        if own and self.vocab_size == self.hf.get_vocab_size():
            return self.hf.to_str()
        return json.dumps({"type": "pretrained", "specials": self.specials, "vocab_size": self.vocab_size,
                           "added": list(self.added), "tokenizer": json.loads(self.hf.to_str())})


def tokenizer_from_json(text: str) -> Tokenizer:
    data = json.loads(text)
    if data.get("type") == "bytes":
        return ByteTokenizer()
    from tokenizers import Tokenizer as HFTokenizer

    if data.get("type") == "pretrained":
        return BPETokenizer(HFTokenizer.from_str(json.dumps(data["tokenizer"])), data["specials"], data["vocab_size"],
                            data["added"])
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
