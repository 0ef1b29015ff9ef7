"""Decoders: the tokens that must stay (sinks, protected ids, the newest) and the recent window.

``recent_share="auto"`` measures per layer, at prefill, how much of the budget the newest tokens
should get, from the attention of the newest prompt queries (``measure_recent_share``).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .scores import rank_tokens

if TYPE_CHECKING:
    from .state import PruneState


def recent_share(state: PruneState, cfg, layer: int, batch: int, device) -> torch.Tensor:
    """``(B,)`` share of ``layer``'s budget kept for the newest tokens (decoders)."""
    share = cfg.window_share()
    if share == "auto":
        r = state.recent[layer]
        return r if r is not None else torch.ones(batch, device=device)
    return torch.full((batch,), float(share), device=device)


def newest_kept(cfg) -> int:
    """How many of the newest tokens always stay: ``max(1, protect_recent)``, and for policies that
    score by observation (``window``...) the ``observe_queries`` observed ones too (as SnapKV keeps its
    window): a token gets its first score only once later queries have attended to it."""
    from .policies import get_policy

    n = max(1, cfg.protect_recent)
    return max(n, cfg.observe_queries) if get_policy(cfg.policy).needs_observation else n


def always_kept(state: PruneState, cfg, cols) -> torch.Tensor:
    """Protected tokens (special, sinks, ``protect_tokens``) and the newest ``newest_kept(cfg)``."""
    return state.protected.gather(1, cols) | (cols >= state.n_cols - newest_kept(cfg))


def window_mask(state: PruneState, cols, k, share, always) -> torch.Tensor:
    """The newest ``share`` (a float or ``(B,)``) of the budget ``k (B,)`` left after the always-kept
    tokens, as a mask over ``cols (B, n)``."""
    room = (k - (always & state.col_valid.gather(1, cols)).sum(1)).clamp(min=0)
    w = torch.floor(room.to(torch.float32) * share).to(torch.long)
    return cols >= (state.n_cols - w).unsqueeze(1)


def protected(state: PruneState, cfg, cols, k, causal: bool, layer: int) -> torch.Tensor:
    """Slots that must stay: special / protected tokens and, in decoders, the newest tokens (at least
    the newest one, which predicts the next token; ``protect_recent``; and the recent window: a share
    of what the budget ``k`` leaves, ``recent_share`` or measured for ``layer`` under ``"auto"``)."""
    if not causal:
        return state.protected.gather(1, cols)
    always = always_kept(state, cfg, cols)
    share = recent_share(state, cfg, layer, cols.shape[0], cols.device)
    return always | window_mask(state, cols, k, share, always)


RECENT_GRID = (0.0, 0.25, 0.5, 0.625, 0.75, 0.8125, 0.875, 0.9375, 1.0)
OBSERVED_QUERIES = 32


def observed_attention(backbone, rt, layer, h, pos, cols, valid, heads, n_obs: int = OBSERVED_QUERIES) -> torch.Tensor:
    """Attention probabilities ``(B, heads, obs, n)`` of the newest ``n_obs`` slots of this layer over
    all current slots (causal), computed before the layer is pruned (prefill only). Only the newest
    queries are projected; keys are projected for every slot (the layer computes them anyway)."""
    fam = rt.family
    rot = fam.rotary(backbone, h, pos) if fam.positions == "rotary" else None
    q, k, _ = fam.project_qkv(layer, fam.attn_input(layer, h), heads, rot)
    obs = min(n_obs, q.shape[2])
    q = q[:, :, -obs:]
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q @ k.transpose(-1, -2)).float() * fam.attention(layer).scaling
    ok = valid[:, None, :] & (cols[:, None, :] <= cols[:, -obs:, None]) & valid[:, -obs:, None]
    logits = logits.masked_fill(~ok[:, None], -math.inf)
    return torch.nan_to_num(logits.softmax(-1), nan=0.0)


def measure_recent_share(state: PruneState, cfg, probs, cols, valid, k: torch.Tensor, policy=None,
                         layer: int = -1) -> torch.Tensor:
    """``recent_share="auto"``: the share of a layer's budget ``k`` to give to the newest tokens.

    ``probs (B, heads, obs, n)``: this layer's attention of the newest prompt queries, which stand
    for the queries to come. For each share in ``RECENT_GRID`` the kept set is the always-kept
    tokens, the newest ``share`` of the rest of the budget, and the remainder filled by the
    policy's score; the share whose set receives the most of the observed
    attention wins (ties: the wider window). Local models (byte-level LMs) get a wide window, models
    with heavy hitters a narrow one. Returns ``(B,)``.
    """
    B = probs.shape[0]
    mass = probs.sum((1, 2)) * valid                                        # (B, n)
    if policy is None:
        from .policies import get_policy
        policy = get_policy(cfg.policy)
    rank = rank_tokens(state, policy, cols, True, layer, probs if policy.needs_observation else None)
    rank = rank.to(torch.float64)
    always = always_kept(state, cfg, cols) & valid
    best = torch.full((B,), -math.inf, device=probs.device)
    share = torch.ones(B, device=probs.device)
    for s in RECENT_GRID:
        base = always | (window_mask(state, cols, k, s, always) & valid)
        rest = (k - base.sum(1)).clamp(min=0)
        top = rank.masked_fill(base | ~valid, -math.inf).topk(min(int(k.max()), rank.shape[1]), dim=1)
        take = (torch.arange(top.indices.shape[1], device=probs.device)[None, :] < rest[:, None]) & \
            torch.isfinite(top.values)
        got = (mass * base).sum(1) + (mass.gather(1, top.indices) * take).sum(1)
        better = got >= best - 1e-6
        best = torch.where(better, torch.maximum(got, best), best)
        share = torch.where(better, torch.full_like(share, s), share)
    return share
