"""Importance scores per token column: SpAtten's cumulative attention and the baselines' scores.

``state`` is the ``PruneState`` of one batch (``state.py``); columns index the full input.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from slimkit.errors import SlimkitError

if TYPE_CHECKING:
    from .state import PruneState


def rank_tokens(state: PruneState, policy, cols: torch.Tensor, causal: bool, layer: int,
                observed: torch.Tensor | None = None, probs: torch.Tensor | None = None, keys=None,
                values=None) -> torch.Tensor:
    """Ranking key ``(B, n)`` of the tokens at ``cols (B, n)`` for ``layer`` under ``policy`` (a
    ``TokenPolicy``; higher = kept). ``observed``: the newest prompt queries' attention, if computed;
    ``probs``, ``keys``, ``values``: the layer's full prefill attention and cache, where at hand."""
    from .policies import ScoreInputs

    s = policy.score(ScoreInputs(state=state, cols=cols, causal=causal, layer=layer, observed=observed,
                                 group=state.group, probs=probs, keys=keys, values=values))
    if s.shape != cols.shape:
        raise SlimkitError(f"policy {policy.name!r} returned scores of shape {tuple(s.shape)}; it must return "
                           f"one score per candidate, shape {tuple(cols.shape)}")
    return s


def rank_heads(state: PruneState, policy, cols: torch.Tensor, layer: int, kv_heads: int,
               observed: torch.Tensor | None, probs: torch.Tensor | None, keys=None, values=None) -> torch.Tensor:
    """Ranking key ``(B, kv_heads, n)``: ``policy.score_heads`` for each key/value head of ``layer``
    (``kv_heads="separate"``); ``probs (B, H, L, n)``: the layer's full prefill attention; ``keys``/``values``
    ``(B, kv_heads, n, d)``: its cache."""
    from .policies import ScoreInputs

    x = ScoreInputs(state=state, cols=cols, causal=True, layer=layer, observed=observed, group=state.group,
                    probs=probs, keys=keys, values=values)
    s = policy.score_heads(x, kv_heads)
    want = (cols.shape[0], kv_heads, cols.shape[1])
    if tuple(s.shape) != want:
        raise SlimkitError(f"policy {policy.name!r} returned per-head scores of shape {tuple(s.shape)}; "
                           f"score_heads must return one score per key/value head and candidate, shape {want}")
    return s


def accumulate(state: PruneState, probs, cols, valid, k_cols, k_valid, causal: bool, layer: int = -1) -> None:
    """Add the attention each key received (summed over heads and real query rows) to its score;
    ``count`` gets how many (head, query) pairs could see it, for the causal normalisation. Where
    ``state.layer_score[layer]`` is kept (policies with ``keeps_layer_scores``), it gets this layer's
    attention too."""
    heads = probs.shape[1]
    if causal and probs.shape[2] == 1:                       # one new token: it sees every cached key
        contrib = probs.sum((1, 2), dtype=torch.float32) * valid
        add_layer_score(state, layer, contrib, k_cols)
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
    add_layer_score(state, layer, contrib, k_cols)
    add_scores(state, contrib, heads, cols, valid, k_cols, k_valid, causal)


def add_layer_score(state: PruneState, layer: int, contrib, k_cols) -> None:
    """``state.layer_score[layer] (B, n_cols)`` += ``contrib (B, Lk)`` at ``k_cols``, where it is kept."""
    if 0 <= layer < len(state.layer_score) and state.layer_score[layer] is not None:
        ls = state.layer_score[layer]
        if ls.shape[1] < state.n_cols:
            ls = torch.cat([ls, ls.new_zeros(ls.shape[0], state.n_cols - ls.shape[1])], 1)
        state.layer_score[layer] = ls.scatter_add(1, k_cols, contrib)


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
