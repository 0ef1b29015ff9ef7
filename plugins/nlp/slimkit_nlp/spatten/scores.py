"""Importance scores per token column: SpAtten's cumulative attention and the baselines' scores.

``state`` is the ``PruneState`` of one batch (``runtime.py``); columns index the full input.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from slimkit.errors import SlimkitError

if TYPE_CHECKING:
    from .runtime import PruneState


def rank_tokens(state: PruneState, cfg, cols: torch.Tensor, causal: bool) -> torch.Tensor:
    """Ranking key ``(B, n)`` of the tokens at ``cols (B, n)`` under ``cfg.policy`` (higher = kept)."""
    p = cfg.policy
    if p == "spatten":
        s = state.score.gather(1, cols)
        return s / state.count.gather(1, cols).clamp(min=1.0) if causal else s
    if p == "per_layer":
        s = state.last.gather(1, cols)
        return s / state.last_count.gather(1, cols).clamp(min=1.0) if causal else s
    if p == "random":
        return state.rand.gather(1, cols)
    if p == "streaming":
        return cols.to(torch.float32)
    if p == "h2o":
        return state.score.gather(1, cols)
    raise SlimkitError(f"unknown policy {p!r}")  # pragma: no cover - validated by the config


def accumulate(state: PruneState, probs, cols, valid, k_cols, k_valid, causal: bool) -> None:
    """Add the attention each key received (summed over heads and real query rows) to its score;
    ``count`` gets how many (head, query) pairs could see it, for the causal normalisation."""
    heads = probs.shape[1]
    if causal and probs.shape[2] == 1:                       # one new token: it sees every cached key
        contrib = probs.sum((1, 2), dtype=torch.float32) * valid
        cnt = k_valid.float() * (heads * valid.float())
        state.score.scatter_add_(1, k_cols, contrib)
        state.count.scatter_add_(1, k_cols, cnt)
        state.last = torch.zeros_like(state.last).scatter_add_(1, k_cols, contrib)
        state.last_count = torch.zeros_like(state.last_count).scatter_add_(1, k_cols, cnt)
        return
    if bool(valid.all()):
        contrib = probs.sum((1, 2), dtype=torch.float32)                    # (B, Lk)
    else:
        contrib = (probs.float() * valid[:, None, :, None]).sum((1, 2))
    add_scores(state, contrib, heads, cols, valid, k_cols, k_valid, causal)


def add_scores(state: PruneState, contrib, heads: int, cols, valid, k_cols, k_valid, causal: bool) -> None:
    """Add ``contrib (B, Lk)`` (attention received, summed over heads and real queries) to the scores."""
    if causal:
        seen = k_valid[:, None, :] & valid[:, :, None] & (k_cols[:, None, :] <= cols[:, :, None])
        cnt = seen.sum(1).float() * heads
    else:
        cnt = (valid.sum(1, keepdim=True).float() * heads).expand_as(contrib) * k_valid
    state.score.scatter_add_(1, k_cols, contrib)
    state.count.scatter_add_(1, k_cols, cnt)
    state.last = torch.zeros_like(state.last).scatter_add_(1, k_cols, contrib)
    state.last_count = torch.zeros_like(state.last_count).scatter_add_(1, k_cols, cnt)
