"""Tokenisation with dynamic padding: a batch is padded to its own longest input, never to a fixed length."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

__all__ = ["Batch", "TextTokenizer"]


@dataclass(frozen=True)
class Batch:
    """Token ids and mask, int64, shaped [batch, longest input in the batch]."""

    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def n_tokens(self) -> list[int]:
        return self.attention_mask.sum(axis=1).astype(int).tolist()


class TextTokenizer:
    """Wraps a ``tokenizer.json``; ``max_tokens`` counts the special tokens too."""

    def __init__(self, tokenizer_file: str | Path, max_tokens: int = 256):
        self._tok = Tokenizer.from_file(str(tokenizer_file))
        self._tok.no_padding()
        self._tok.no_truncation()
        self.max_tokens = max_tokens
        self.pad_id = self._tok.token_to_id("[PAD]") or 0

    def count(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._tok.encode_batch(texts)]

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, special tokens included, not truncated (the caller applies its limit)."""
        return [e.ids for e in self._tok.encode_batch(texts)]

    def truncate(self, ids: list[int], max_tokens: int | None = None) -> list[int]:
        """The first tokens of ``ids``, keeping the final [SEP]: the body is cut, not the closing token."""
        limit = max_tokens or self.max_tokens
        return ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:]

    def pad(self, ids: list[list[int]]) -> Batch:
        """One batch padded to its own longest input (dynamic padding)."""
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return Batch(input_ids, mask)

    def __call__(self, texts: list[str]) -> Batch:
        """Tokenise, keep the first ``max_tokens`` of each text, pad to the batch's longest."""
        return self.pad([self.truncate(x) for x in self.encode(texts)])
