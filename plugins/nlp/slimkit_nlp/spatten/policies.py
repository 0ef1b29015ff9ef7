"""Token pruning policies: small classes with one scoring method, as kvpress presses are.

A policy says which tokens matter; the machinery (``state.py``) does everything else the same
way for every policy: the cascade schedule, attention sinks and the recent window, physical
removal during prefill, KV eviction during generation, padding, positions and statistics. So
benchmarks compare scores, not implementations, and a user's own policy gets all of it::

    from slimkit_nlp.spatten import TokenPolicy, register_policy

    class NewestFirst(TokenPolicy):
        name = "newest"
        def score(self, x):                  # x: ScoreInputs
            return x.cols.float()            # (B, n): higher = kept

    register_policy(NewestFirst())
    slimkit.apply(model, "spatten", policy="newest", token_keep=0.5)

Built in:

* ``spatten`` (the technique): cumulative attention each token received, summed over heads, query
  rows and all layers so far; causal models divide by the number of (head, query) pairs that could
  see the token, or the earliest tokens always win (SpAtten, section 3.1).
* ``window``: the attention the newest ``OBSERVED_QUERIES`` prompt queries pay *in this layer*,
  summed over the query heads, smoothed over neighbouring tokens (SnapKV's observation window), so a
  question at the end of the prompt steers what every later layer keeps. During generation each new
  query's attention in the layer is added. Computed inside the cascade: the tokens it drops leave the
  later layers' prefill, which presses cannot do.
* ``spatten_window``: both, each normalised to a distribution over the candidates, averaged.
* ``observed``: the attention a token received from *every* prompt query of the layer (divided by how many
  queries could see it, as kvpress's ObservedAttentionPress) averaged with the observation window's.
* With ``kv_heads="separate"`` each key/value head keeps its own tokens by ``score_heads`` (the default
  gives every head ``score``; ``per_layer``, ``window``/``window_group`` and ``observed`` score each head by
  its group of query heads).
* baselines: ``per_layer`` (this layer's attention only), ``random``, ``streaming`` (sinks and the
  newest tokens), ``h2o`` (accumulated attention plus a recent window).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from slimkit.errors import ConfigError

if TYPE_CHECKING:
    from .state import PruneState


@dataclass
class ScoreInputs:
    """What a policy may read to score the candidate slots of one layer.

    state: the batch's ``PruneState`` (``score``/``count``: cumulative attention received and how many
        (head, query) pairs could see each column; ``last``/``last_count``: the latest layer only;
        ``rand``; ``layer_score[layer]``: this layer's own accumulated attention where kept).
    cols: ``(B, n)`` the candidates' columns (index in the full input, padding included).
    causal: decoder model.
    layer: the layer that keeps or drops the candidates.
    observed: ``(B, H, obs, n)`` attention probabilities of the newest prompt queries in this layer over
        the candidates (decoder prefill, when the policy sets ``needs_observation``), else None.
    probs: ``(B, H, L, n)`` this layer's attention probabilities of every prompt query over the
        candidates (decoder prefill with ``prefill_pruning=False``), else None.
    keys, values: ``(B, Hkv, n, d)`` this layer's cached keys and values of the candidates (rotary applied
        to keys) at the same moment, else None (as kvpress passes them to a press's ``score``).
    """

    state: "PruneState"
    cols: torch.Tensor
    causal: bool
    layer: int
    observed: Optional[torch.Tensor] = None
    group: int = 1            # query heads per key/value head (GQA)
    probs: Optional[torch.Tensor] = None
    keys: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None


class TokenPolicy:
    """Base class: ``score(inputs) -> (B, n)`` float, higher = more important (kept first).

    Class attributes tune how the machinery treats the policy:
    ``reads_attention`` (the score reads ``state.score``/``last``, accumulated from every layer's full
    attention map; when False, decoder prefill runs PyTorch's fused attention instead of eager),
    ``needs_observation`` (compute ``ScoreInputs.observed`` at decoder prefill),
    ``keeps_layer_scores`` (accumulate each layer's own attention into ``state.layer_score`` during
    generation), ``uses_sinks`` (keep the config's ``sink_tokens`` first tokens), and
    ``default_recent_share`` (the share of a layer's budget given to the newest tokens when the
    config's ``recent_share`` is None: a float or ``"auto"``).
    """

    name: str = ""
    reads_attention: bool = True
    needs_observation: bool = False
    keeps_layer_scores: bool = False
    uses_sinks: bool = False
    default_recent_share: float | str = 0.0

    def score(self, x: ScoreInputs) -> torch.Tensor:
        raise NotImplementedError

    def score_heads(self, x: ScoreInputs, kv_heads: int) -> torch.Tensor:
        """``(B, kv_heads, n)``: a score per key/value head (``kv_heads="separate"``), higher = kept by that
        head. The default gives every head ``score(x)``: all heads keep the same tokens."""
        s = self.score(x)
        return s.unsqueeze(1).expand(-1, kv_heads, -1)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _normalised_cumulative(x: ScoreInputs) -> torch.Tensor:
    s = x.state.score.gather(1, x.cols)
    return s / x.state.count.gather(1, x.cols).clamp(min=1.0) if x.causal else s


class CumulativeAttention(TokenPolicy):
    """SpAtten: attention received, summed over heads, queries and layers (normalised in decoders)."""

    name = "spatten"
    uses_sinks = True
    default_recent_share = "auto"

    def score(self, x: ScoreInputs) -> torch.Tensor:
        return _normalised_cumulative(x)


def _previous_layer_received(x: ScoreInputs) -> torch.Tensor:
    """``(B, n)``: attention the candidates received in the latest scored layer (per query that could see
    them, in causal models)."""
    s = x.state.last.gather(1, x.cols)
    return s / x.state.last_count.gather(1, x.cols).clamp(min=1.0) if x.causal else s


class PerLayerAttention(TokenPolicy):
    """The previous layer's attention only (no accumulation across layers)."""

    name = "per_layer"

    def score(self, x: ScoreInputs) -> torch.Tensor:
        return _previous_layer_received(x)


    def score_heads(self, x: ScoreInputs, kv_heads: int) -> torch.Tensor:
        """Per key/value head at a full prefill (``x.probs``): the attention each candidate received from
        the prompt's queries of the head's group, divided by how many queries could see it (as kvpress's
        ObservedAttentionPress); otherwise the shared score."""
        if x.probs is None:
            return super().score_heads(x, kv_heads)
        return received_per_group(x.probs, x.state.col_valid, x.cols, kv_heads)


def received_per_group(probs: torch.Tensor, col_valid: torch.Tensor, cols: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """``probs (B, H, L, n)`` causal attention of ``L`` queries over ``n`` candidate keys at columns ``cols
    (B, n)`` (the queries are the last ``L`` of them) -> ``(B, kv_heads, n)``: attention received, averaged
    over the real queries that could see the key and over the query heads of each key/value group."""
    b, h, L, n = probs.shape
    valid_k = col_valid.gather(1, cols).float()                              # (B, n)
    q_valid = valid_k[:, -L:]                                                # queries are the newest slots
    got = (probs.float() * q_valid[:, None, :, None]).sum(2)                 # (B, H, n)
    seen = torch.flip(torch.flip(q_valid, [1]).cumsum(1), [1])              # real queries at or after slot
    seen = torch.cat([seen[:, :1].expand(-1, n - L), seen], 1) if n > L else seen
    got = got / seen.clamp(min=1.0)[:, None, :]
    return got.view(b, kv_heads, h // kv_heads, n).mean(2) * valid_k[:, None, :]


class RandomTokens(TokenPolicy):
    name = "random"
    reads_attention = False

    def score(self, x: ScoreInputs) -> torch.Tensor:
        return x.state.rand.gather(1, x.cols)


class Streaming(TokenPolicy):
    """StreamingLLM: sinks plus the newest tokens (the score is the position)."""

    name = "streaming"
    reads_attention = False
    uses_sinks = True

    def score(self, x: ScoreInputs) -> torch.Tensor:
        return x.cols.to(torch.float32)


class HeavyHitters(TokenPolicy):
    """H2O: accumulated (unnormalised) attention plus half the budget for the newest tokens."""

    name = "h2o"
    default_recent_share = 0.5

    def score(self, x: ScoreInputs) -> torch.Tensor:
        return x.state.score.gather(1, x.cols)


POOL_KERNEL = 7   # neighbours averaged into a token's observation score (SnapKV pools the same way)


def observation_score(observed: torch.Tensor, kernel: int = POOL_KERNEL, group: int = 1,
                      per_group_max: bool = False) -> torch.Tensor:
    """``(B, H, obs, n)`` probabilities -> ``(B, n)``: mean over the observed queries, max-pooled over
    ``kernel`` neighbouring slots (a token next to an attended one stays, so an attended phrase is kept
    whole), then over heads: summed, or (``per_group_max``) averaged within each key/value group of
    ``group`` query heads, normalised per group and maxed over groups, so every key/value head's most
    attended tokens stay even when the other heads look elsewhere."""
    s = observed.float().mean(2)                                          # (B, H, n)
    if kernel > 1 and s.shape[-1] >= kernel:
        b, h, n = s.shape
        s = F.max_pool1d(s.reshape(b * h, 1, n), kernel, stride=1, padding=kernel // 2).reshape(b, h, n)
    if not per_group_max:
        return s.sum(1)
    b, h, n = s.shape
    g = s.view(b, h // group, group, n).mean(2)                           # (B, Hkv, n)
    g = g / g.sum(-1, keepdim=True).clamp(min=1e-12)
    return g.amax(1)


class ObservationWindow(TokenPolicy):
    """Attention from the newest prompt queries in this layer (SnapKV's window), inside the cascade."""

    name = "window"
    per_group_max = False
    reads_attention = False
    needs_observation = True
    keeps_layer_scores = True
    uses_sinks = True
    default_recent_share = 0.0

    def score(self, x: ScoreInputs) -> torch.Tensor:
        if x.observed is not None:
            return observation_score(x.observed, group=x.group, per_group_max=self.per_group_max)
        kept = x.state.layer_score[x.layer]
        if kept is not None:
            if kept.shape[1] < x.state.n_cols:          # columns added since (new tokens: nothing received yet)
                kept = torch.cat([kept, kept.new_zeros(kept.shape[0], x.state.n_cols - kept.shape[1])], 1)
            return kept.gather(1, x.cols)
        return _normalised_cumulative(x)      # a layer that never observed (encoders): cumulative

    def score_heads(self, x: ScoreInputs, kv_heads: int) -> torch.Tensor:
        """Per key/value head at prefill: the observed queries' attention of the head's group of query
        heads, pooled as in ``observation_score`` (SnapKV per head); otherwise the shared score."""
        if x.observed is None:
            return super().score_heads(x, kv_heads)
        return observation_per_group(x.observed, kv_heads)


def _as_distribution(s: torch.Tensor) -> torch.Tensor:
    """Scores ``(..., n)`` -> non-negative, summing to 1 over the candidates (the last dimension)."""
    s = s.clamp(min=0)
    return s / s.sum(-1, keepdim=True).clamp(min=1e-12)


def observation_per_group(observed: torch.Tensor, kv_heads: int, kernel: int = POOL_KERNEL) -> torch.Tensor:
    """``(B, H, obs, n)`` probabilities -> ``(B, kv_heads, n)``: mean over the observed queries, max-pooled
    over ``kernel`` neighbouring slots, averaged over the query heads of each key/value group."""
    s = observed.float().mean(2)                                          # (B, H, n)
    b, h, n = s.shape
    if kernel > 1 and n >= kernel:
        s = F.max_pool1d(s.reshape(b * h, 1, n), kernel, stride=1, padding=kernel // 2).reshape(b, h, n)
    return s.view(b, kv_heads, h // kv_heads, n).mean(2)


class GroupWindow(ObservationWindow):
    """``window`` with the heads aggregated per key/value group and maxed over groups (see
    ``observation_score``)."""

    name = "window_group"
    per_group_max = True


class CumulativeAndWindow(ObservationWindow):
    """Both signals, each normalised over the candidates, averaged."""

    name = "spatten_window"
    reads_attention = True

    def score(self, x: ScoreInputs) -> torch.Tensor:
        return 0.5 * (_as_distribution(super().score(x)) + _as_distribution(_normalised_cumulative(x)))


class ObservedAndWindow(ObservationWindow):
    """``observed``: two signals, each normalised to a distribution over the candidates and averaged: the
    attention a token received from *every* prompt query of the layer (divided by how many queries could
    see it, as kvpress's ObservedAttentionPress) and the attention of the newest ``observe_queries`` prompt
    queries (SnapKV's observation window, pooled over neighbours), so the text's heavy hitters stay and a
    question at the end of the prompt still steers what is kept. Per key/value head with
    ``kv_heads="separate"`` (each head's group of query heads). Where the full attention map is not at hand
    (the cascade, which scores before the layer) the previous layer's received attention stands in."""

    name = "observed"
    reads_attention = True

    def score(self, x: ScoreInputs) -> torch.Tensor:
        if x.probs is not None:
            received = received_per_group(x.probs, x.state.col_valid, x.cols, 1)[:, 0]
        else:
            received = _previous_layer_received(x)
        return 0.5 * (_as_distribution(received) + _as_distribution(super().score(x)))

    def score_heads(self, x: ScoreInputs, kv_heads: int) -> torch.Tensor:
        if x.probs is None or x.observed is None:
            return super().score_heads(x, kv_heads)
        received = received_per_group(x.probs, x.state.col_valid, x.cols, kv_heads)
        window = observation_per_group(x.observed, kv_heads)
        return 0.5 * (_as_distribution(received) + _as_distribution(window))


class ObservedTimesValueNorm(ObservedAndWindow):
    """``observed_values``: the ``observed`` score of each key times the norm of its value ``||v_j||`` (per
    key/value head with ``kv_heads="separate"``, the mean over heads otherwise): a token whose value is small
    moves the attention output little however much attention it receives (VATP, Guo et al. 2024, "Attention
    Score is not All You Need for Token Importance Indicator in KV Cache Reduction: Value Also Matters";
    kvpress's ExpectedAttentionPress weighs its scores the same way). Where the values are not at hand (the
    cascade scores before the layer computes them) it is ``observed``."""

    name = "observed_values"

    def score(self, x: ScoreInputs) -> torch.Tensor:
        s = super().score(x)
        return s if x.values is None else s * x.values.float().norm(dim=-1).mean(1)

    def score_heads(self, x: ScoreInputs, kv_heads: int) -> torch.Tensor:
        s = super().score_heads(x, kv_heads)
        return s if x.values is None else s * x.values.float().norm(dim=-1)


_POLICIES: dict[str, TokenPolicy] = {}


def register_policy(policy: TokenPolicy, *, replace: bool = False) -> TokenPolicy:
    """Make ``policy`` (an instance) available as ``SpattenConfig(policy=policy.name)``; returns it."""
    if not isinstance(policy, TokenPolicy):
        raise TypeError(f"register_policy expects a TokenPolicy instance, got {type(policy).__name__}")
    if not policy.name:
        raise ValueError("a TokenPolicy needs a non-empty 'name'")
    if policy.name in _POLICIES and not replace:
        raise ValueError(f"policy {policy.name!r} is already registered; pass replace=True to override it")
    _POLICIES[policy.name] = policy
    return policy


def policy_names() -> list[str]:
    return list(_POLICIES)


def get_policy(name: str) -> TokenPolicy:
    """The registered policy called ``name``; ``ConfigError`` listing the known ones otherwise."""
    try:
        return _POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown spatten policy {name!r}; known policies are "
                          f"{', '.join(repr(n) for n in _POLICIES)} (add one with "
                          f"slimkit_nlp.spatten.register_policy)") from None


for _p in (CumulativeAttention(), ObservationWindow(), GroupWindow(), CumulativeAndWindow(), ObservedAndWindow(),
           ObservedTimesValueNorm(), PerLayerAttention(), RandomTokens(), Streaming(), HeavyHitters()):
    register_policy(_p)
