"""A byte-level tokenizer (vocabulary 256): no files, no hub, round-trips any text."""
from __future__ import annotations

import torch


class ByteTokenizer:
    """``encode(text) -> list[int]`` of UTF-8 bytes; ``decode(ids) -> str``."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")

    def __call__(self, text: str, return_tensors: str | None = None):
        ids = self.encode(text)
        if return_tensors == "pt":
            ids = torch.tensor([ids])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}
