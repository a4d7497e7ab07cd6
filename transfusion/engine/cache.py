"""The KV cache of a generation batch: per layer keys and values, and what each column is."""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD_DOC = -1  # doc id of padding columns: real positions (doc 0) never attend to them


@dataclass
class KVCache:
    """Per layer (k, v) of shape (B, H, S, hd), and each column's doc and image id (B, S)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    doc: torch.Tensor | None = None
    image: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.doc is None else self.doc.shape[1]

    def append(self, present: list, doc: torch.Tensor, image: torch.Tensor) -> None:
        if self.kv is None:
            self.kv, self.doc, self.image = list(present), doc, image
            return
        self.kv = [(torch.cat([k0, k1], 2), torch.cat([v0, v1], 2)) for (k0, v0), (k1, v1) in zip(self.kv, present)]
        self.doc, self.image = torch.cat([self.doc, doc], 1), torch.cat([self.image, image], 1)

    def rows(self, index: torch.Tensor) -> "KVCache":
        return KVCache([(k[index], v[index]) for k, v in self.kv], self.doc[index], self.image[index])

    def left_pad(self, length: int) -> "KVCache":
        """The same rows with padding columns in front, ``length`` columns in all."""
        extra = length - self.length
        if extra <= 0:
            return self
        B = self.doc.shape[0]
        pad_cols = self.doc.new_full((B, extra), PAD_DOC)
        kv = [(torch.cat([k.new_zeros(*k.shape[:2], extra, k.shape[3]), k], 2),
               torch.cat([v.new_zeros(*v.shape[:2], extra, v.shape[3]), v], 2)) for k, v in self.kv]
        return KVCache(kv, torch.cat([pad_cols, self.doc], 1), torch.cat([pad_cols, self.image], 1))

    @staticmethod
    def concat(caches: list["KVCache"]) -> "KVCache":
        """Rows of several caches, left-padded to the longest, stacked."""
        length = max(c.length for c in caches)
        caches = [c.left_pad(length) for c in caches]
        kv = [(torch.cat([c.kv[i][0] for c in caches]), torch.cat([c.kv[i][1] for c in caches]))
              for i in range(len(caches[0].kv))]
        return KVCache(kv, torch.cat([c.doc for c in caches]), torch.cat([c.image for c in caches]))
