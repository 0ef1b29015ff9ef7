"""The pruned forwards: ``encoder_forward`` and ``decoder_forward``, each a short sequence of named steps.

``spatten_forward`` (bound to the backbone by ``transform.apply_spatten``) checks the inputs, builds a
``Walk`` (what one forward carries from layer to layer) and hands it to the forward of the model's
kind. Per layer, both forwards run the same steps, in this order:

1. ``prune_hidden``: decoder prefill (the cascade) and merging encoders remove tokens before the layer;
2. ``pick_heads``: the head units this layer computes;
3. ``project``: q/k/v of the kept tokens and heads (rotary at each token's original position);
4. ``append_and_evict`` (decoders): the KV cache, and eviction to the budget while generating;
5. ``attend``: attention, probabilities where a score reads them;
6. ``score``: importance scores, the cache cut after a full prefill, head scores;
7. ``finish_layer``: encoders that drop remove next layer's pruned tokens before the output projection
   and FFN; then the output projection, the FFN and the layer's statistics.

Vocabulary as in ``runtime.py``: a *column* is a token's index in the full input, a *slot* a position in
a (pruned) tensor, ``valid`` marks slots holding real tokens.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from slimkit.errors import ShapeError, SlimkitError

from ..compat import cache_kwargs, pick_cache
from .attention import additive_mask, encoder_attention, key_bias, value_prune
from .merge import merge_pruned, size_bias
from .runtime import (
    SpattenModelOutput,
    SpattenRuntime,
    _attention_fn,
    _cache_select,
    _check_budget,
    _choose,
    _compact,
    _compress_after_prefill,
    _follow,
    _sdpa,
    _unslide,
)
from .schedule import count_for, gather_slots, select_slots
from .scores import accumulate, add_scores, rank_tokens
from .state import STATE_ATTR, PruneState, record_eviction
from .stats import LayerStats, SpattenStats
from .window import measure_recent_share, observed_attention, protected


class Walk:
    """What one forward carries through the layers: the kept slots (``h (B, n, D)``, ``cols``, ``pos``,
    ``valid (B, n)``), the cache and ``PruneState``, the kept heads, and the encoders' merge bookkeeping
    (``size``, ``merge_bias``, ``owner``, ``full``)."""

    def __init__(self, bb, rt: SpattenRuntime, **kw: Any):
        self.bb, self.rt, self.fam, self.cfg = bb, rt, rt.family, rt.config
        self.causal = rt.family.causal
        self.__dict__.update(kw)


def spatten_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                    inputs_embeds=None, past_key_values=None, use_cache=None, encoder_hidden_states=None,
                    cache=None, **kwargs):
    """The backbone's forward with cascade pruning (bound to the backbone by ``apply``)."""
    if encoder_hidden_states is not None:
        raise SlimkitError("spatten does not support cross-attention (encoder_hidden_states); "
                           "apply it to encoder-only or decoder-only models")
    if (input_ids is None) == (inputs_embeds is None):
        raise ShapeError("pass exactly one of input_ids (B, L) or inputs_embeds (B, L, H)")
    if input_ids is not None and input_ids.dim() != 2:
        raise ShapeError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    w = begin(self, input_ids, inputs_embeds, attention_mask, position_ids, token_type_ids,
              pick_cache(cache, past_key_values), use_cache)
    return decoder_forward(w) if w.causal else encoder_forward(w)


def encoder_forward(w: Walk) -> SpattenModelOutput:
    for li, layer in enumerate(w.fam.layers(w.bb)):
        prune_hidden(w, li, layer)
        units = pick_heads(w, li)
        q, k, v = project(w, layer)
        ctx, probs, received, fetched = attend(w, li, layer, q, k, v, w.cols, w.valid)
        score(w, li, q, probs, received, w.cols, w.valid, fused=False)
        finish_layer(w, li, layer, ctx, units, k.shape[2], w.valid, fetched)
    return end(w)


def decoder_forward(w: Walk) -> SpattenModelOutput:
    for li, layer in enumerate(w.fam.layers(w.bb)):
        prune_hidden(w, li, layer)
        units = pick_heads(w, li)
        q, k, v = project(w, layer)
        keys, values, k_cols, k_valid = append_and_evict(w, li, k, v)
        fused = _fused_attention_pays(w, layer)
        if fused:   # no attention map needed: PyTorch's fused attention
            mask = _fused_mask(w, layer, q, k_cols, k_valid)
            ctx, probs, received, fetched = _sdpa(q, keys, values, mask, w.fam.attention(layer).scaling), None, None, 1.0
        else:
            ctx, probs, received, fetched = attend(w, li, layer, q, keys, values, k_cols, k_valid)
        score(w, li, q, probs, received, k_cols, k_valid, fused)
        finish_layer(w, li, layer, ctx, units, keys.shape[2], k_valid, fetched)
    return end(w)


def _fused_attention_pays(w: Walk, layer) -> bool:
    """Decoders: True where no step reads this layer's attention probabilities, so PyTorch's fused attention
    can replace the eager one: a cascade prefill whose policy reads no attention map (``window``: only the
    observed rows, computed apart), and generation steps of a pruned model that does not evict while
    generating (nothing reads scores after the prefill's cut). A model that prunes nothing keeps eager
    attention, so it equals the dense model exactly."""
    if w.impl != "eager" or w.cfg.value_keep < 1.0 or w.fam.attention_kwargs(layer):
        return False
    if w.first:
        return w.rt.cascade and not w.rt.policy.reads_attention
    return not w.cfg.generation_pruning and min(w.rt.token_ratios) < 1.0


def _fused_mask(w: Walk, layer, q, k_cols, k_valid) -> Optional[torch.Tensor]:
    """The additive mask for fused attention; None for a one-token step over a cache of real tokens
    without a sliding window (every cached key precedes the query: nothing to mask)."""
    window = w.fam.sliding_window(layer)
    if q.shape[2] == 1 and window is None and bool(k_valid.all()):
        return None
    return additive_mask(w.cols, k_cols, k_valid, True, q.dtype, window, q.shape[1])


# -- before the layers -----------------------------------------------------------------------------------
def begin(bb, input_ids, inputs_embeds, attention_mask, position_ids, token_type_ids, cache, use_cache) -> Walk:
    """Cache and state, masks, positions, protected tokens and the embeddings: a ``Walk`` at layer 0."""
    rt: SpattenRuntime = bb._spatten_runtime
    causal, cfg = rt.family.causal, rt.config
    ref = input_ids if input_ids is not None else inputs_embeds
    B, n_new, dev = ref.shape[0], ref.shape[1], ref.device
    cache = _decoder_cache(bb, cache, use_cache) if causal else None
    state = _state_for(rt, cache, B, dev)
    t_prev = state.n_cols
    am = _full_mask(attention_mask, B, t_prev, n_new, dev)
    valid = am[:, t_prev:]
    position_ids = _positions(position_ids, am, B, t_prev, n_new, causal, dev)
    state.extend(valid, _protected_new(rt, input_ids, am, valid, t_prev))
    h = rt.family.embed(bb, input_ids, inputs_embeds, position_ids, token_type_ids)
    impl, attn_fn = _attention_fn(bb, rt)
    merge = cfg.pruned_tokens == "merge" and not causal
    owner = None if causal else torch.where(valid, torch.arange(n_new, device=dev).expand(B, n_new), -1)
    return Walk(bb, rt, B=B, n_new=n_new, dev=dev, cache=cache, state=state, first=t_prev == 0, t_prev=t_prev,
                valid=valid, n_real_new=valid.sum(1), total_real=am.sum(1), h=h,
                cols=(t_prev + torch.arange(n_new, device=dev)).expand(B, n_new), pos=position_ids,
                impl=impl, attn_fn=attn_fn, stats=SpattenStats(input_tokens=float(valid.sum()) / B),
                heads_cur=None, full=None if causal else torch.zeros_like(h), merge=merge,
                size=valid.to(h.dtype), merge_bias=None, owner=owner, rotary=None, rotary_pos=None)


def _decoder_cache(bb, cache, use_cache):
    use_cache = bb.config.use_cache if use_cache is None else use_cache
    if not use_cache:
        return None
    if cache is None:
        from transformers import DynamicCache
        cache = DynamicCache(config=bb.config)
    return cache


def _state_for(rt: SpattenRuntime, cache, B: int, dev) -> PruneState:
    """The ``PruneState`` riding on ``cache`` (a new one for an empty or absent cache)."""
    state: Optional[PruneState] = getattr(cache, STATE_ATTR, None) if cache is not None else None
    if cache is not None and state is None and cache.get_seq_length() > 0:
        raise SlimkitError("this cache was filled without spatten; start generation with an empty cache "
                           "on the spatten model")
    if state is None:
        state = PruneState(B, rt.n_layers, rt.n_units, dev, rt.config.seed)
        state.group = rt.group
        if cache is not None:
            _unslide(cache)
            state.attach(cache)
    return state


def _full_mask(attention_mask, B: int, t_prev: int, n_new: int, dev) -> torch.Tensor:
    """The boolean mask ``(B, t_prev + n_new)`` of the whole sequence (cached tokens included)."""
    if attention_mask is None:
        return torch.ones(B, t_prev + n_new, dtype=torch.bool, device=dev)
    if attention_mask.dim() != 2:
        raise ShapeError(f"spatten needs a 2-D attention_mask (batch, length), got {attention_mask.dim()}-D")
    if attention_mask.shape[1] != t_prev + n_new:
        raise ShapeError(f"attention_mask has {attention_mask.shape[1]} columns but the cache holds {t_prev} "
                         f"tokens plus {n_new} new ones; pass the mask of the whole sequence")
    return attention_mask.to(torch.bool)


def _positions(position_ids, am, B: int, t_prev: int, n_new: int, causal: bool, dev) -> torch.Tensor:
    if position_ids is None:
        if causal:
            position_ids = (am.long().cumsum(-1) - 1).clamp(min=0)[:, t_prev:]
        else:
            position_ids = torch.arange(n_new, device=dev).expand(B, n_new)
    return position_ids.expand(B, -1) if position_ids.shape[0] == 1 else position_ids


def _protected_new(rt: SpattenRuntime, input_ids, am, valid, t_prev: int) -> torch.Tensor:
    """Never-pruned new tokens: special / protected ids, the first real token (CLS / BOS), the last real
    token of encoders (SEP), and the decoders' attention sinks."""
    causal, cfg = rt.family.causal, rt.config
    prot = torch.zeros_like(valid)
    if input_ids is not None and len(rt.protect_ids):
        prot |= torch.isin(input_ids, rt.protect_ids.to(valid.device))
    real_rank = (am.long().cumsum(-1))[:, t_prev:]           # 1-based rank of each real token
    prot |= valid & (real_rank == 1)
    if not causal:
        prot |= valid & (real_rank == valid.sum(1, keepdim=True))
    if causal and rt.policy.uses_sinks:
        prot |= valid & (real_rank <= cfg.sink_tokens)
    return prot


# -- the steps of a layer ----------------------------------------------------------------------------------
def prune_hidden(w: Walk, li: int, layer) -> None:
    """Step 1: remove tokens from the hidden set before layer ``li`` (decoder prefill with the cascade,
    encoders that merge; encoders that drop prune in ``finish_layer`` of the layer before)."""
    rt = w.rt
    if not (w.first and rt.cascade and rt.token_ratios[li] < 1.0 and (w.causal or w.merge)):
        return
    k = count_for(rt.token_ratios[li], w.n_real_new)
    observed = _observe(w, li, layer, k) if w.causal else None
    sel = _choose(w.state, w.cfg, rt, li, k, w.cols, w.valid, w.causal, observed)
    if sel is None:
        return
    index, new_valid, gone = sel
    _keep_pruned_states(w, gone)
    merged_into = None
    if w.merge and gone.any():                         # targets: kept, real, not CLS/SEP/protected
        targets = new_valid & ~w.state.protected.gather(1, w.cols.gather(1, index))
        if targets.any():
            w.h, w.size, merged_into = merge_pruned(w.h, w.size, gone, index, targets)
    if merged_into is None:
        w.h, w.size = gather_slots(w.h, index), w.size.gather(1, index)
    if merged_into is not None or w.merge_bias is not None:
        w.merge_bias = size_bias(w.size, new_valid)
    if w.owner is not None:
        w.owner = _follow(w.owner, w.cols, index, new_valid, gone, merged_into)
    w.cols, w.pos, w.valid = w.cols.gather(1, index), w.pos.gather(1, index), new_valid


def _observe(w: Walk, li: int, layer, k: torch.Tensor) -> Optional[torch.Tensor]:
    """Decoder prefill: check the budget, compute the newest prompt queries' attention where the policy or
    ``recent_share="auto"`` reads it, and seed the layer's own score; returns the observation or None."""
    rt, cfg, state = w.rt, w.cfg, w.state
    _check_budget(rt, cfg, k, w.n_real_new, li)
    if not (rt.auto_recent or rt.policy.needs_observation):
        return None
    probs = observed_attention(w.bb, rt, layer, w.h, w.pos, w.cols, w.valid, w.heads_cur, cfg.observe_queries)
    if rt.policy.keeps_layer_scores:
        state.layer_score[li] = torch.zeros(w.B, state.n_cols, device=w.dev).scatter_add(
            1, w.cols, probs.float().sum((1, 2)) * w.valid)
    if rt.auto_recent:
        state.recent[li] = measure_recent_share(state, cfg, probs, w.cols, w.valid, k, rt.policy, li)
    return probs if rt.policy.needs_observation else None


def _keep_pruned_states(w: Walk, gone: torch.Tensor) -> None:
    """Encoders: pruned tokens keep the state entering this layer in ``full_hidden_state``."""
    if w.full is not None and gone.any():
        w.full[gone.nonzero(as_tuple=True)[0], (w.cols - w.t_prev)[gone]] = w.h[gone]


def pick_heads(w: Walk, li: int) -> int:
    """Step 2: the head units layer ``li`` computes (cascade: a subset of the previous layer's); returns
    how many."""
    rt, state = w.rt, w.state
    if w.first:
        u = rt.unit_counts[li]
        cur = rt.n_units if w.heads_cur is None else w.heads_cur.shape[1]
        if u < cur:
            base = torch.arange(rt.n_units, device=w.dev).expand(w.B, -1) if w.heads_cur is None else w.heads_cur
            top = state.head_score.gather(1, base).topk(u, dim=1).indices
            w.heads_cur = base.gather(1, top).sort(dim=1).values
        state.heads[li] = w.heads_cur
    else:
        w.heads_cur = state.heads[li]
    return rt.n_units if w.heads_cur is None else w.heads_cur.shape[1]


def project(w: Walk, layer):
    """Step 3: queries ``(B, U*g, n, d)``, keys and values ``(B, U, n, d)`` of the kept slots and heads."""
    fam = w.fam
    if fam.positions == "rotary" and (w.rotary is None or w.rotary_pos is not w.pos):
        w.rotary, w.rotary_pos = fam.rotary(w.bb, w.h, w.pos), w.pos
    return fam.project_qkv(layer, fam.attn_input(layer, w.h), w.heads_cur, w.rotary)


def append_and_evict(w: Walk, li: int, k_new, v_new):
    """Step 4 (decoders): append to the cache; while generating with ``generation_pruning``, evict down to
    the layer's budget. Returns ``(keys, values, k_cols, k_valid)`` of the layer's cache."""
    if w.cache is None:
        return k_new, v_new, w.cols, w.valid
    rt, cfg, state, cache = w.rt, w.cfg, w.state, w.cache
    keys, values = cache.update(k_new, v_new, li)
    prev = state.slots[li]
    if prev is None:
        k_cols, k_valid = w.cols, w.valid
    elif prev[0].dim() == 3:            # kv_heads="separate": a slot map per key/value head (B, Hkv, n)
        hk = prev[0].shape[1]
        k_cols = torch.cat([prev[0], w.cols.unsqueeze(1).expand(-1, hk, -1)], 2)
        k_valid = torch.cat([prev[1], w.valid.unsqueeze(1).expand(-1, hk, -1)], 2)
    else:
        k_cols, k_valid = torch.cat([prev[0], w.cols], 1), torch.cat([prev[1], w.valid], 1)
    if not w.first and cfg.generation_pruning and rt.token_ratios[li] < 1.0:
        sel, alive = _generation_selection(w, li, k_cols, k_valid)
        if sel is not None:
            index, new_valid = sel
            kept = torch.zeros_like(k_valid).scatter(1, index, new_valid)
            record_eviction(state, k_cols, alive & ~kept, li)
            _cache_select(cache, li, index)
            keys, values = (x.gather(2, index[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1]))
                            for x in (keys, values))
            k_cols, k_valid = k_cols.gather(1, index), new_valid
    state.slots[li] = (k_cols, k_valid)
    return keys, values, k_cols, k_valid


def _generation_selection(w: Walk, li: int, k_cols, k_valid):
    """The slots of layer ``li``'s cache to keep while generating: per sample, a chunk is evicted only where
    the cache is over budget; ``(selection or None, alive)``."""
    rt, cfg, state = w.rt, w.cfg, w.state
    alive = k_valid & (state.evicted_at.gather(1, k_cols) > li)
    budget = count_for(rt.token_ratios[li], w.total_real)
    n_alive = alive.sum(1)
    over = n_alive > budget
    sel = None
    if bool(over.any()):
        target = torch.where(over, torch.clamp(budget - (cfg.evict_chunk - 1), min=1), n_alive)
        rank = rank_tokens(state, rt.policy, k_cols, True, li)
        # this call's own tokens stay for this call: no query has seen them yet (a multi-token step,
        # e.g. teacher forcing or chunked prefill, would otherwise lose them unread)
        prot = protected(state, cfg, k_cols, target, True, li) | (k_cols >= w.t_prev)
        sel = select_slots(rank, alive, prot, target, k_cols, pad_first=True)
    if sel is None and bool((k_valid & ~alive).any()):
        sel = _compact(alive, k_cols)
    return sel, alive


def attend(w: Walk, li: int, layer, q, keys, values, k_cols, k_valid):
    """Step 5: attention through the active implementation; ``(context (B, n, H, d), probs or None,
    received or None, share of values fetched)``. Encoders with eager attention use slimkit's encoder
    attention (the same result, fewer passes; ``received`` = attention each key got)."""
    cfg, fam = w.cfg, w.fam
    att = fam.attention(layer)
    need_probs = _needs_scores(w, li) or cfg.value_keep < 1.0
    if not w.causal and w.impl == "eager" and cfg.value_keep >= 1.0:
        ctx, received = encoder_attention(q, keys, values, key_bias(k_valid, w.merge_bias), att.scaling, w.valid,
                                          need_probs)
        return ctx, None, received, 1.0
    mask = None if (not w.causal and bool(k_valid.all())) else additive_mask(
        w.cols, k_cols, k_valid, w.causal, q.dtype, fam.sliding_window(layer), q.shape[1])
    if w.merge_bias is not None:                              # proportional attention (merged tokens)
        bias = w.merge_bias[:, None, None, :].to(q.dtype)
        mask = bias if mask is None else mask + bias
    ctx, probs = w.attn_fn(att, q, keys, values, mask, dropout=0.0, scaling=att.scaling,
                           **fam.attention_kwargs(layer))
    if probs is None and need_probs:
        raise SlimkitError(f"the attention implementation {w.impl!r} returns no attention probabilities; "
                           f"spatten needs them: use attn_implementation='eager' or a custom function "
                           f"that returns (output, probabilities)")
    fetched = 1.0
    if cfg.value_keep < 1.0:
        ctx, fetched = value_prune(probs, values, mask, cfg.value_keep)
    return ctx, probs, None, fetched


def _needs_scores(w: Walk, li: int) -> bool:
    """Whether anything reads layer ``li``'s attention scores: a later layer of this prefill (cascade), the
    cache cut or a later generation step (``generation_pruning``; otherwise nothing is scored after the
    prompt)."""
    if not w.first:
        return w.cfg.generation_pruning
    return w.cache is not None or w.rt.prunes_after[li]


def score(w: Walk, li: int, q, probs, received, k_cols, k_valid, fused: bool) -> None:
    """Step 6: importance scores (only where a later layer or generation step prunes), the cache cut of a
    full prefill (``prefill_pruning=False``), and head scores."""
    rt, state = w.rt, w.state
    if _needs_scores(w, li) and not fused:
        if probs is None:
            add_scores(state, received, q.shape[1], w.cols, w.valid, k_cols, k_valid, w.causal)
        else:   # a layer's own scores (window policies) follow the generation-stage queries only
            accumulate(state, probs, w.cols, w.valid, k_cols, k_valid, w.causal, -1 if w.first else li)
    if w.first and not rt.cascade and w.cache is not None and rt.token_ratios[li] < 1.0:
        _compress_after_prefill(state, w.cfg, rt, w.cache, li, probs, w.cols, w.valid, w.n_real_new)


def _add_head_scores(w: Walk, ctx, units: int) -> None:
    if w.first and w.cfg.head_keep < 1.0:
        mag = (ctx.float().abs() * w.valid[:, :, None, None]).sum((1, 3)).view(w.B, units, w.rt.group).sum(-1)
        ids = torch.arange(w.rt.n_units, device=w.dev).expand(w.B, -1) if w.heads_cur is None else w.heads_cur
        w.state.head_score.scatter_add_(1, ids, mag)


def finish_layer(w: Walk, li: int, layer, ctx, units: int, n_keys: int, k_valid, fetched: float) -> None:
    """Step 7: head scores; encoders that drop remove the tokens the next layer drops now, before the
    output projection and the FFN, whose results for them nobody would read (the same output as dropping
    them before the next layer, with less work); then output projection, FFN and the layer's stats."""
    rt, fam = w.rt, w.fam
    _add_head_scores(w, ctx, units)
    ctx = ctx.reshape(w.B, ctx.shape[1], -1)
    n_in, tokens_in = w.h.shape[1], float(w.valid.sum()) / w.B
    sel, n_o = None, n_in
    if w.first and not w.causal and not w.merge and li + 1 < rt.n_layers and rt.token_ratios[li + 1] < 1.0:
        sel = _choose(w.state, w.cfg, rt, li + 1, count_for(rt.token_ratios[li + 1], w.n_real_new), w.cols,
                      w.valid, False)
    if sel is None:
        w.h = fam.after_attention(layer, w.h, fam.project_out(layer, ctx, w.heads_cur))
    else:
        index, new_valid, gone = sel
        _keep_pruned_states(w, gone)
        w.h = fam.after_attention(layer, gather_slots(w.h, index),
                                  fam.project_out(layer, gather_slots(ctx, index), w.heads_cur))
        w.size, n_o = w.size.gather(1, index), index.shape[1]
        w.owner = _follow(w.owner, w.cols, index, new_valid, gone, None)
        w.cols, w.pos, w.valid = w.cols.gather(1, index), w.pos.gather(1, index), new_valid
    w.h = fam.feed_forward(layer, w.h)
    n_dense_keys = w.state.n_cols if w.cache is not None else w.n_new
    w.stats.layers.append(LayerStats(
        layer=li, tokens_in=tokens_in, keys=float(k_valid.sum()) / w.B,
        heads_kept=units * rt.group, heads_total=rt.n_units * rt.group,
        macs=rt.layer_macs(li, n_in, n_o, w.h.shape[1], n_keys, units, w.B),
        dense_macs=rt.layer_macs(li, w.n_new, w.n_new, w.n_new, n_dense_keys, rt.n_units, w.B),
        values_fetched=fetched))
    w.stats.head_ids.append(w.heads_cur)


def _cached_tokens(valid: torch.Tensor) -> float:
    """Real tokens a layer caches, summed over the batch: ``valid (B, n)``, or ``(B, Hkv, n)`` when each key/value
    head keeps its own tokens (the same number per head: the mean over heads)."""
    return float(valid.sum()) / (valid.shape[1] if valid.dim() == 3 else 1)


# -- after the layers ----------------------------------------------------------------------------------
def end(w: Walk) -> SpattenModelOutput:
    """Final norm, statistics and the output with its pruning information."""
    fam, state = w.fam, w.state
    h = fam.final_norm(w.bb, w.h)
    kept = torch.where(w.valid, w.cols - w.t_prev, torch.full_like(w.cols, -1))
    if w.full is not None:
        w.full[w.valid.nonzero(as_tuple=True)[0], kept[w.valid]] = h[w.valid]
    w.stats.kept_indices = kept
    if w.cache is not None:
        w.stats.kv_tokens = [_cached_tokens(s[1]) / w.B if s is not None else 0.0 for s in state.slots]
    w.rt.publish(w.stats)
    pooler = fam.pooler(w.bb)
    return SpattenModelOutput(
        last_hidden_state=h, pooler_output=pooler(h) if pooler is not None else None, **cache_kwargs(w.cache),
        kept_indices=kept, kept_attention_mask=w.valid.long(), kept_token_weights=w.size * w.valid,
        token_owner=w.owner, full_hidden_state=w.full,
        pruned_at_layer=None if w.causal else state.evicted_at[:, w.t_prev:].clone())
