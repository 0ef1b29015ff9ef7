"""``PruneState``: what pruning remembers about one batch, and the helpers that change it.

It rides on the KV cache object between ``generate()`` steps (``attach``), so a later step finds the
scores, the per-layer slot -> column maps, the kept heads and which layer evicted each token.
Vocabulary as in ``runtime.py``: a *column* is a token's index in the full input (left padding
included), a *slot* a position in a (pruned) tensor. Scores are added by ``scores.py``; the window
and sink decisions read it in ``window.py``; ``runtime.py`` extends it and records evictions.
"""
from __future__ import annotations

from typing import Optional

import torch

STATE_ATTR = "_spatten_state"


class PruneState:
    """What pruning remembers about one batch (kept on the cache object between generate steps)."""

    def __init__(self, batch: int, n_layers: int, n_units: int, device, seed: int):
        z = lambda dt: torch.zeros(batch, 0, dtype=dt, device=device)  # noqa: E731
        self.n_cols = 0
        self.score, self.count = z(torch.float32), z(torch.float32)      # cumulative attention received
        self.last, self.last_count = z(torch.float32), z(torch.float32)  # latest layer only
        self.col_valid, self.protected = z(torch.bool), z(torch.bool)
        self.rand = z(torch.float32)
        self.evicted_at = z(torch.long)              # first layer without the token (n_layers = none)
        self.slots: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = [None] * n_layers
        self.heads: list[Optional[torch.Tensor]] = [None] * n_layers
        self.recent: list[Optional[torch.Tensor]] = [None] * n_layers   # (B,) recent-window share per layer
        self.layer_score: list[Optional[torch.Tensor]] = [None] * n_layers   # (B, n_cols) a layer's own attention
        self.head_score = torch.zeros(batch, n_units, device=device)
        self.n_layers = n_layers
        self.group = 1                               # query heads per key/value head
        self.gen = torch.Generator(device="cpu").manual_seed(seed)

    def select_batch(self, index: torch.Tensor) -> None:
        """Reorder / select batch rows (beam search reorders the cache between steps)."""
        for name in ("score", "count", "last", "last_count", "col_valid", "protected", "rand", "evicted_at",
                     "head_score"):
            t = getattr(self, name)
            setattr(self, name, t.index_select(0, index.to(t.device)))
        self.slots = [None if s is None else (s[0].index_select(0, index), s[1].index_select(0, index))
                      for s in self.slots]
        self.heads = [None if h is None else h.index_select(0, index) for h in self.heads]
        self.recent = [None if r is None else r.index_select(0, index) for r in self.recent]
        self.layer_score = [None if r is None else r.index_select(0, index) for r in self.layer_score]

    def attach(self, cache) -> None:
        """Ride on ``cache``; follow its beam reordering."""
        setattr(cache, STATE_ATTR, self)
        original = cache.reorder_cache

        def reorder_cache(beam_idx, _orig=original, _state=self):
            _orig(beam_idx)
            _state.select_batch(beam_idx)
        cache.reorder_cache = reorder_cache

    def extend(self, valid: torch.Tensor, protected: torch.Tensor) -> None:
        b, n = valid.shape
        dev = valid.device
        self.n_cols += n
        f = torch.zeros(b, n, device=dev)
        self.score = torch.cat([self.score, f], 1)
        self.count = torch.cat([self.count, f], 1)
        self.last = torch.cat([self.last, f], 1)
        self.last_count = torch.cat([self.last_count, f], 1)
        self.col_valid = torch.cat([self.col_valid, valid], 1)
        self.protected = torch.cat([self.protected, protected], 1)
        self.rand = torch.cat([self.rand, torch.rand(b, n, generator=self.gen).to(dev)], 1)
        self.evicted_at = torch.cat([self.evicted_at, torch.full((b, n), self.n_layers, device=dev)], 1)


def record_eviction(state: PruneState, cols, gone, layer: int) -> None:
    """``state.evicted_at``: ``layer`` for the columns ``cols[gone]`` (``(B, n)``), unless evicted earlier."""
    if gone.any():
        rows = torch.arange(cols.shape[0], device=cols.device).unsqueeze(1).expand_as(cols)[gone]
        gc = cols[gone]
        state.evicted_at[rows, gc] = torch.minimum(state.evicted_at[rows, gc], torch.full_like(gc, layer))
