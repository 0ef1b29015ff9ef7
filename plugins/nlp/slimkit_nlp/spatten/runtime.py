"""The pruned layer loop: SpAtten's cascade token and head pruning with physical removal.

``spatten_forward`` replaces the backbone's ``forward`` (see ``transform.py``). It runs the
embeddings, then every layer through the family adapter, and between layers gathers the kept
tokens (hidden states, validity mask, original columns and positions), so QKV, attention and
FFN of later layers really shrink. Encoders that drop tokens gather right after the attention
whose scores chose them, so the dropped rows skip that layer's output projection and FFN too. Decoders keep one ``PruneState`` on the cache object across
``generate()`` steps: accumulated scores, the per-layer slot -> column maps, kept heads and
which layer evicted each token, so cached keys/values can be evicted in later steps and new
tokens keep their original absolute positions (learned or rotary) whatever the cache length.

Vocabulary: a *column* is a token's index in the full input (left padding included); a *slot*
is a position in a (pruned) tensor; ``valid`` marks slots holding real tokens.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

from slimkit.errors import ShapeError, SlimkitError

from ..compat import cache_kwargs, pick_cache
from .attention import additive_mask, encoder_attention, key_bias, value_prune
from .merge import merge_pruned, size_bias
from .policies import get_policy
from .schedule import count_for, gather_slots, keep_schedule, kv_budget_schedule, select_slots
from .scores import accumulate, add_scores, rank_tokens
from .state import STATE_ATTR, PruneState, record_eviction
from .stats import LayerStats, SpattenStats
from .window import measure_recent_share, newest_kept, observed_attention, protected

@dataclass
class SpattenModelOutput(BaseModelOutputWithPoolingAndCrossAttentions):
    """The backbone output with pruning information.

    last_hidden_state ``(B, L_kept, H)``; kept_indices ``(B, L_kept)``: positions in this forward's
    input (-1 = padding slot); kept_attention_mask ``(B, L_kept)``: 1 for real tokens.
    kept_token_weights ``(B, L_kept)`` float: how many input tokens each kept token stands for
    (1 per real token; with ``pruned_tokens="merge"`` a kept token also counts the pruned tokens
    merged into it; 0 for padding). Mean pooling over the input: ``sum(w * h) / sum(w)``.
    token_owner ``(B, L)`` (encoders): for each input token, the slot of ``last_hidden_state`` that
    stands for it (itself if kept, the token it was merged into, -1 if dropped or padding), so
    ``last_hidden_state.gather(1, token_owner)`` gives a full-length output.
    full_hidden_state ``(B, L, H)`` (encoders): every input token's last computed state, i.e. the
    final state of kept tokens and, for pruned tokens, the state entering the last layer that attended
    to them (``pruned_at_layer - 1``).
    pruned_at_layer ``(B, L)`` (encoders): the layer that no longer saw each token (the number of
    layers for tokens kept to the end, and for padding). The KV cache field is ``cache`` or ``past_key_values``,
    as the installed transformers names it.
    """

    kept_indices: torch.Tensor | None = None
    kept_attention_mask: torch.Tensor | None = None
    kept_token_weights: torch.Tensor | None = None
    token_owner: torch.Tensor | None = None
    full_hidden_state: torch.Tensor | None = None
    pruned_at_layer: torch.Tensor | None = None


class SpattenRuntime:
    """Per-model settings: the family adapter, the config and the derived schedules."""

    def __init__(self, family, backbone, config):
        self.family = family
        self.config = config
        layers = list(family.layers(backbone))
        self.n_layers = len(layers)
        self.policy = get_policy(config.policy)
        #: decoders with prefill_pruning=False: full prefill, each layer's cache compressed after its attention
        self.cascade = not (family.causal and not config.prefill_pruning)
        if not self.cascade:
            self.token_ratios = [config.token_keep] * self.n_layers
        elif family.causal and config.decoder_budget == "kv":
            self.token_ratios = kv_budget_schedule(self.n_layers, config.token_keep, config.token_start,
                                                   config.token_slope)
        else:
            self.token_ratios = keep_schedule(self.n_layers, config.token_keep, config.token_start, 1,
                                              config.token_slope)
        self.n_units = family.num_units(backbone)
        head_ratios = keep_schedule(self.n_layers, config.head_keep, config.head_start, 0, config.token_slope)
        counts, prev = [], self.n_units
        for r in head_ratios:
            prev = min(prev, max(1, round(r * self.n_units)))
            counts.append(prev)
        self.unit_counts = counts
        ids = set(family.special_token_ids(backbone.config)) | set(config.protect_tokens or [])
        self.protect_ids = torch.tensor(sorted(ids), dtype=torch.long)
        self.group = family.num_heads(backbone) // self.n_units
        self.head_dim = family.head_dim(backbone)
        self.eager = family.eager_attention()
        # Mult-Adds bookkeeping: per-token weight work of each layer, and its attention projections
        self.layer_weights = [sum(p.numel() for p in layer.parameters() if p.dim() == 2) for layer in layers]
        self.attn_weights = [family.attn_weight_numel(layer) for layer in layers]
        self.out_weights = [family.out_weight_numel(layer) for layer in layers]
        self.auto_recent = config.window_share() == "auto"
        self.prunes_after = [any(r < 1.0 for r in self.token_ratios[i + 1:]) for i in range(self.n_layers)]
        self.stats = SpattenStats()
        self.owners: list = []

    def publish(self, stats: SpattenStats) -> None:
        self.stats = stats
        for ref in self.owners:
            obj = ref()
            if obj is not None:
                object.__setattr__(obj, "spatten_stats", stats)

    def layer_macs(self, layer: int, n_q: int, n_o: int, n_ffn: int, n_k: int, units: int, batch: int) -> int:
        """Mult-Adds of ``layer``: q/k/v for ``n_q`` tokens, attention over ``n_k`` keys, the output
        projection for ``n_o`` and the feed-forward for ``n_ffn`` tokens (encoders drop tokens before them)."""
        frac = units / self.n_units
        out = self.out_weights[layer] * frac
        qkv = self.attn_weights[layer] * frac - out
        ffn = self.layer_weights[layer] - self.attn_weights[layer]
        heads = units * self.group
        return int(batch * (n_q * qkv + n_o * out + n_ffn * ffn + 2 * n_q * n_k * heads * self.head_dim))


def _attention_fn(backbone, rt: SpattenRuntime):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = backbone.config._attn_implementation or "eager"
    return impl, ALL_ATTENTION_FUNCTIONS.get_interface(impl, rt.eager)


def _unslide(cache) -> None:
    """Sliding-window cache layers (``DynamicCache(config=...)``, as ``generate()`` makes it, has them for the
    sliding layers of Mistral, Qwen2, Gemma 2/3 ...) keep only their newest ``window - 1`` entries on their
    own, which breaks the per-layer slot map; spatten masks windows itself (``family.sliding_window``), so
    the sliding layers of an empty cache become plain dynamic layers."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    if not layers or cache.get_seq_length() > 0:
        return
    for i, lay in enumerate(layers):
        if isinstance(lay, DynamicSlidingWindowLayer):
            layers[i] = DynamicLayer()


def _cache_select(cache, layer: int, index: torch.Tensor) -> None:
    """Keep only the slots ``index (B, n)`` of ``layer`` in ``cache``.

    Cache classes may implement ``select_tokens(layer_idx, index)`` themselves (e.g. quantized
    caches); otherwise ``cache.layers[layer].keys/.values`` ``(B, heads, T, d)`` are gathered.
    """
    if hasattr(cache, "select_tokens"):
        cache.select_tokens(layer, index)
        return
    lay = cache.layers[layer]
    lay.keys = lay.keys.gather(2, index[:, None, :, None].expand(-1, lay.keys.shape[1], -1, lay.keys.shape[-1]))
    lay.values = lay.values.gather(
        2, index[:, None, :, None].expand(-1, lay.values.shape[1], -1, lay.values.shape[-1]))


def spatten_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                    inputs_embeds=None, past_key_values=None, use_cache=None, encoder_hidden_states=None,
                    cache=None, **kwargs):
    """The backbone's forward with cascade pruning (bound to the backbone by ``apply``)."""
    rt: SpattenRuntime = self._spatten_runtime
    fam, cfg = rt.family, rt.config
    causal = fam.causal
    if encoder_hidden_states is not None:
        raise SlimkitError("spatten does not support cross-attention (encoder_hidden_states); "
                           "apply it to encoder-only or decoder-only models")
    if (input_ids is None) == (inputs_embeds is None):
        raise ShapeError("pass exactly one of input_ids (B, L) or inputs_embeds (B, L, H)")
    if input_ids is not None and input_ids.dim() != 2:
        raise ShapeError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    ref = input_ids if input_ids is not None else inputs_embeds
    B, n_new = ref.shape[0], ref.shape[1]
    dev = ref.device

    # -- cache and state ---------------------------------------------------------------------------
    cache = pick_cache(cache, past_key_values)
    if causal:
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            from transformers import DynamicCache
            cache = DynamicCache(config=self.config)
        elif not use_cache:
            cache = None
    else:
        cache = None
    state: PruneState | None = getattr(cache, STATE_ATTR, None) if cache is not None else None
    if cache is not None and state is None and cache.get_seq_length() > 0:
        raise SlimkitError("this cache was filled without spatten; start generation with an empty cache "
                           "on the spatten model")
    if state is None:
        state = PruneState(B, rt.n_layers, rt.n_units, dev, cfg.seed)
        state.group = rt.group
        if cache is not None:
            _unslide(cache)
            state.attach(cache)
    first = state.n_cols == 0
    t_prev = state.n_cols

    # -- masks and positions --------------------------------------------------------------------------
    if attention_mask is None:
        attention_mask = torch.ones(B, t_prev + n_new, dtype=torch.long, device=dev)
    if attention_mask.dim() != 2:
        raise ShapeError(f"spatten needs a 2-D attention_mask (batch, length), got {attention_mask.dim()}-D")
    if attention_mask.shape[1] != t_prev + n_new:
        raise ShapeError(f"attention_mask has {attention_mask.shape[1]} columns but the cache holds {t_prev} "
                         f"tokens plus {n_new} new ones; pass the mask of the whole sequence")
    am = attention_mask.to(torch.bool)
    valid = am[:, t_prev:]
    if position_ids is None:
        if causal:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, t_prev:]
        else:
            position_ids = torch.arange(n_new, device=dev).expand(B, n_new)
    position_ids = position_ids.expand(B, -1) if position_ids.shape[0] == 1 else position_ids

    prot = torch.zeros(B, n_new, dtype=torch.bool, device=dev)
    if input_ids is not None and len(rt.protect_ids):
        prot |= torch.isin(input_ids, rt.protect_ids.to(dev))
    real_rank = (am.long().cumsum(-1))[:, t_prev:]           # 1-based rank of each real token
    prot |= valid & (real_rank == 1)                          # first real token: CLS / BOS / sink
    if not causal:                                             # last real token: SEP
        n_real = valid.sum(1, keepdim=True)
        prot |= valid & (real_rank == n_real)
    if causal and rt.policy.uses_sinks:                       # attention sinks (StreamingLLM)
        prot |= valid & (real_rank <= cfg.sink_tokens)
    state.extend(valid, prot)
    total_real = am.sum(1)                                     # real tokens so far, per sample

    n_real_new = valid.sum(1)                                  # k is taken from each sample's real length
    h = fam.embed(self, input_ids, inputs_embeds, position_ids, token_type_ids)
    cols = (t_prev + torch.arange(n_new, device=dev)).expand(B, n_new)
    pos = position_ids
    impl, attn_fn = _attention_fn(self, rt)
    stats = SpattenStats(input_tokens=float(valid.sum()) / B)
    heads_cur: Optional[torch.Tensor] = None                   # None = all units
    full = torch.zeros_like(h) if not causal else None
    merge = cfg.pruned_tokens == "merge" and not causal
    size = valid.to(h.dtype)                                   # input tokens each slot stands for
    merge_bias = None                                          # (B, n) log(size) logit bias once tokens merged
    owner = torch.where(valid, torch.arange(n_new, device=dev).expand(B, n_new), -1) if not causal else None
    rotary, rotary_pos = None, None

    for li, layer in enumerate(fam.layers(self)):
        # 1. token pruning of the hidden set before the layer: decoders (prefill) and encoders that
        #    merge. Encoders that drop prune at the end of the previous layer's attention (step 7).
        if first and rt.cascade and rt.token_ratios[li] < 1.0 and (causal or merge):
            k = count_for(rt.token_ratios[li], n_real_new)
            probs_obs = None
            if causal:
                _check_budget(rt, cfg, k, n_real_new, li)
            if causal and (rt.auto_recent or rt.policy.needs_observation):   # this layer's newest queries
                probs_obs = observed_attention(self, rt, layer, h, pos, cols, valid, heads_cur, cfg.observe_queries)
                if rt.policy.keeps_layer_scores:
                    state.layer_score[li] = torch.zeros(B, state.n_cols, device=dev).scatter_add(
                        1, cols, probs_obs.float().sum((1, 2)) * valid)
            if causal and rt.auto_recent:                      # measure this layer's locality first
                state.recent[li] = measure_recent_share(state, cfg, probs_obs, cols, valid, k, rt.policy, li)
            sel = _choose(state, cfg, rt, li, k, cols, valid, causal,
                          probs_obs if rt.policy.needs_observation else None)
            if sel is not None:
                index, new_valid, gone = sel
                if full is not None and gone.any():           # pruned tokens keep the state entering this layer
                    full[gone.nonzero(as_tuple=True)[0], (cols - t_prev)[gone]] = h[gone]
                merged_into = None
                if merge and gone.any():                       # targets: kept, real, not CLS/SEP/protected
                    targets = new_valid & ~state.protected.gather(1, cols.gather(1, index))
                    if targets.any():
                        h, size, merged_into = merge_pruned(h, size, gone, index, targets)
                if merged_into is None:
                    h, size = gather_slots(h, index), size.gather(1, index)
                if merged_into is not None or merge_bias is not None:
                    merge_bias = size_bias(size, new_valid)
                if owner is not None:
                    owner = _follow(owner, cols, index, new_valid, gone, merged_into)
                cols, pos, valid = cols.gather(1, index), pos.gather(1, index), new_valid
        # 2. head units of this layer
        if first:
            u = rt.unit_counts[li]
            cur = rt.n_units if heads_cur is None else heads_cur.shape[1]
            if u < cur:
                base = torch.arange(rt.n_units, device=dev).expand(B, -1) if heads_cur is None else heads_cur
                hs = state.head_score.gather(1, base)
                top = hs.topk(u, dim=1).indices
                heads_cur = base.gather(1, top).sort(dim=1).values
            state.heads[li] = heads_cur
        else:
            heads_cur = state.heads[li]
        units = rt.n_units if heads_cur is None else heads_cur.shape[1]
        att = fam.attention(layer)
        # 3. projections (rotary with each token's original position)
        if fam.positions == "rotary" and (rotary is None or rotary_pos is not pos):
            rotary, rotary_pos = fam.rotary(self, h, pos), pos
        q, k_, v = fam.project_qkv(layer, fam.attn_input(layer, h), heads_cur, rotary)
        # 4. the cache: append, then evict to the budget (generation stage)
        if cache is not None:
            keys, values = cache.update(k_, v, li)
            prev = state.slots[li]
            if prev is None:
                k_cols, k_valid = cols, valid
            else:
                k_cols, k_valid = torch.cat([prev[0], cols], 1), torch.cat([prev[1], valid], 1)
            if not first and cfg.generation_pruning and rt.token_ratios[li] < 1.0:
                alive = k_valid & (state.evicted_at.gather(1, k_cols) > li)
                budget = count_for(rt.token_ratios[li], total_real)
                sel = None
                n_alive = alive.sum(1)
                over = n_alive > budget
                if bool(over.any()):                    # per sample: evict a chunk only where over budget
                    target = torch.where(over, torch.clamp(budget - (cfg.evict_chunk - 1), min=1), n_alive)
                    rank = rank_tokens(state, rt.policy, k_cols, causal, li)
                    # this call's own tokens stay for this call: no query has seen them yet (a multi-token
                    # step, e.g. teacher forcing or chunked prefill, would otherwise lose them unread)
                    prot_k = protected(state, cfg, k_cols, target, causal, li) | (k_cols >= t_prev)
                    sel = select_slots(rank, alive, prot_k, target, k_cols, pad_first=True)
                if sel is None and bool((k_valid & ~alive).any()):
                    sel = _compact(alive, k_cols)
                if sel is not None:
                    index, new_valid = sel
                    kept = torch.zeros_like(k_valid).scatter(1, index, new_valid)
                    record_eviction(state, k_cols, alive & ~kept, li)
                    _cache_select(cache, li, index)
                    keys = keys.gather(2, index[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[-1]))
                    values = values.gather(2, index[:, None, :, None].expand(-1, values.shape[1], -1,
                                                                               values.shape[-1]))
                    k_cols, k_valid = k_cols.gather(1, index), new_valid
            state.slots[li] = (k_cols, k_valid)
        else:
            keys, values, k_cols, k_valid = k_, v, cols, valid
        # 5. attention through the active implementation (it must return probabilities)
        need_probs = cache is not None or rt.prunes_after[li] or cfg.value_keep < 1.0
        fused = (causal and first and rt.cascade and not rt.policy.reads_attention and impl == "eager"
                 and cfg.value_keep >= 1.0 and not fam.attention_kwargs(layer))
        if fused:   # decoder prefill whose policy reads no attention map (window: only the observed rows)
            mask = additive_mask(cols, k_cols, k_valid, True, q.dtype, fam.sliding_window(layer))
            ctx, probs, received = _sdpa(q, keys, values, mask, att.scaling), None, None
        elif not causal and impl == "eager" and cfg.value_keep >= 1.0:   # encoders: same result, fewer passes
            mask = None
            ctx, received = encoder_attention(q, keys, values, key_bias(k_valid, merge_bias), att.scaling, valid,
                                               need_probs)
            probs = None
        else:
            received = None
            mask = None if (not causal and bool(k_valid.all())) else additive_mask(
                cols, k_cols, k_valid, causal, q.dtype, fam.sliding_window(layer))
            if merge_bias is not None:                             # proportional attention (merged tokens)
                bias = merge_bias[:, None, None, :].to(q.dtype)
                mask = bias if mask is None else mask + bias
            ctx, probs = attn_fn(att, q, keys, values, mask, dropout=0.0, scaling=att.scaling,
                                 **fam.attention_kwargs(layer))
        if probs is None and received is None and need_probs and not fused:
            raise SlimkitError(f"the attention implementation {impl!r} returns no attention probabilities; "
                               f"spatten needs them: use attn_implementation='eager' or a custom function "
                               f"that returns (output, probabilities)")
        fetched = 1.0
        if cfg.value_keep < 1.0:
            ctx, fetched = value_prune(probs, values, mask, cfg.value_keep)
        # 6. importance scores (only needed if a later layer or a later generation step prunes)
        if (cache is not None or rt.prunes_after[li]) and not fused:
            if probs is None:
                add_scores(state, received, q.shape[1], cols, valid, k_cols, k_valid, causal)
            else:
                # a layer's own scores (window policies) follow the generation-stage queries only
                accumulate(state, probs, cols, valid, k_cols, k_valid, causal, -1 if first else li)
        if first and not rt.cascade and cache is not None and rt.token_ratios[li] < 1.0:
            _compress_after_prefill(state, cfg, rt, cache, li, probs, cols, valid, n_real_new)
        if first and rt.config.head_keep < 1.0:
            mag = (ctx.float().abs() * valid[:, :, None, None]).sum((1, 3))        # (B, heads)
            mag = mag.view(B, units, rt.group).sum(-1)
            ids = torch.arange(rt.n_units, device=dev).expand(B, -1) if heads_cur is None else heads_cur
            state.head_score.scatter_add_(1, ids, mag)
        ctx = ctx.reshape(B, ctx.shape[1], -1)
        n_in, tokens_in = h.shape[1], float(valid.sum()) / B
        # 7. encoders that drop: the tokens the next layer drops leave now, before the output
        #    projection and the feed-forward, whose results for them nobody would read (the same
        #    output as dropping them before the next layer, with less work)
        sel, n_o = None, n_in
        if first and not causal and not merge and li + 1 < rt.n_layers and rt.token_ratios[li + 1] < 1.0:
            sel = _choose(state, cfg, rt, li + 1, count_for(rt.token_ratios[li + 1], n_real_new), cols, valid,
                          causal)
        if sel is None:
            h = fam.after_attention(layer, h, fam.project_out(layer, ctx, heads_cur))
        else:
            index, new_valid, gone = sel
            if full is not None and gone.any():                # pruned tokens keep the state entering this layer
                full[gone.nonzero(as_tuple=True)[0], (cols - t_prev)[gone]] = h[gone]
            h = fam.after_attention(layer, gather_slots(h, index),
                                    fam.project_out(layer, gather_slots(ctx, index), heads_cur))
            size, n_o = size.gather(1, index), index.shape[1]
            owner = _follow(owner, cols, index, new_valid, gone, None)
            cols, pos, valid = cols.gather(1, index), pos.gather(1, index), new_valid
        h = fam.feed_forward(layer, h)
        stats.layers.append(LayerStats(
            layer=li, tokens_in=tokens_in, keys=float(k_valid.sum()) / B,
            heads_kept=units * rt.group, heads_total=rt.n_units * rt.group,
            macs=rt.layer_macs(li, n_in, n_o, h.shape[1], keys.shape[2], units, B),
            dense_macs=rt.layer_macs(li, n_new, n_new, n_new, state.n_cols if cache is not None else n_new, rt.n_units, B),
            values_fetched=fetched))
        stats.head_ids.append(heads_cur)

    h = fam.final_norm(self, h)
    kept = torch.where(valid, cols - t_prev, torch.full_like(cols, -1))
    if full is not None:
        full[valid.nonzero(as_tuple=True)[0], kept[valid]] = h[valid]
    stats.kept_indices = kept
    if cache is not None:
        stats.kv_tokens = [float(s[1].sum()) / B if s is not None else 0.0 for s in state.slots]
    rt.publish(stats)
    pooler = fam.pooler(self)
    pooled = pooler(h) if pooler is not None else None
    return SpattenModelOutput(last_hidden_state=h, pooler_output=pooled, **cache_kwargs(cache),
                              kept_indices=kept, kept_attention_mask=valid.long(),
                              kept_token_weights=size * valid, token_owner=owner, full_hidden_state=full,
                              pruned_at_layer=None if causal else state.evicted_at[:, t_prev:].clone())


def _check_budget(rt: SpattenRuntime, cfg, k: torch.Tensor, n_real: torch.Tensor, layer: int) -> None:
    """Decoders: ``ConfigError`` when layer ``layer``'s budget ``k (B,)`` is below the tokens that must stay
    (sinks + the newest ``max(1, protect_recent)``) for a prompt long enough to need pruning."""
    sinks = cfg.sink_tokens if rt.policy.uses_sinks else 1
    newest = newest_kept(cfg)
    need = sinks + newest
    short = (k < need) & (n_real > need)
    if bool(short.any()):
        from slimkit.errors import ConfigError
        b = int(short.nonzero()[0, 0])
        raise ConfigError(
            f"token_keep={cfg.token_keep:g} leaves {int(k[b])} of this {int(n_real[b])}-token prompt's keys and "
            f"values in layer {layer}, fewer than the {need} that always stay ({sinks} sink tokens + "
            f"{newest} newest); raise token_keep or lower sink_tokens / protect_recent / observe_queries")


def _sdpa(q, k, v, mask, scaling: float) -> torch.Tensor:
    """PyTorch's fused attention, ``(B, L, H, d)``; ``k``/``v`` with fewer (grouped) heads are repeated."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling).transpose(1, 2)


def _compress_after_prefill(state: PruneState, cfg, rt: SpattenRuntime, cache, layer: int, probs, cols, valid,
                            n_real: torch.Tensor) -> None:
    """``prefill_pruning=False``: the layer attended over the whole prompt; keep ``token_ratios[layer]`` of
    its cached keys/values by the policy's score, reading the newest ``observe_queries`` rows of ``probs
    (B, H, L, L)`` as the observation. Hidden states stay complete, so later layers see every token."""
    k = count_for(rt.token_ratios[layer], n_real)
    _check_budget(rt, cfg, k, n_real, layer)
    obs = probs[:, :, -min(cfg.observe_queries, probs.shape[2]):, :]
    if rt.policy.keeps_layer_scores:
        state.layer_score[layer] = torch.zeros(cols.shape[0], state.n_cols, device=cols.device).scatter_add(
            1, cols, obs.float().sum((1, 2)) * valid)
    if rt.auto_recent:
        state.recent[layer] = measure_recent_share(state, cfg, obs, cols, valid, k, rt.policy, layer)
    rank = rank_tokens(state, rt.policy, cols, True, layer, obs if rt.policy.needs_observation else None)
    sel = select_slots(rank, valid, protected(state, cfg, cols, k, True, layer), k, cols, pad_first=True)
    if sel is None:
        return
    index, new_valid = sel
    record_eviction(state, cols, valid & ~torch.zeros_like(valid).scatter(1, index, new_valid), layer)
    _cache_select(cache, layer, index)
    state.slots[layer] = (cols.gather(1, index), new_valid)


def _choose(state: PruneState, cfg, rt: SpattenRuntime, layer: int, k: torch.Tensor, cols, valid, causal: bool,
            observed: Optional[torch.Tensor] = None):
    """Pick the tokens that ``layer`` (the first one without the others) keeps out of the slots
    ``cols``/``valid (B, n)``: ``(index (B, k), new_valid (B, k), gone (B, n))`` or None when every
    real token stays. Records ``layer`` in ``state.evicted_at`` for the tokens that go. ``observed``:
    the newest prompt queries' attention in ``layer`` (decoder prefill, policies that read it)."""
    rank = rank_tokens(state, rt.policy, cols, causal, layer, observed)
    sel = select_slots(rank, valid, protected(state, cfg, cols, k, causal, layer), k, cols, pad_first=causal)
    if sel is None:
        return None
    index, new_valid = sel
    gone = valid & ~torch.zeros_like(valid).scatter(1, index, new_valid)
    record_eviction(state, cols, gone, layer)
    return index, new_valid, gone


def _follow(owner, cols, index, new_valid, gone, merged_into):
    """Update ``owner (B, L)`` (input token -> slot standing for it) after keeping ``index (B, k)`` of
    the slots ``cols (B, n)``; merged slots follow ``merged_into``, dropped ones become -1."""
    slot_map = torch.full_like(cols, -1).scatter(
        1, index, torch.where(new_valid, torch.arange(index.shape[1], device=cols.device), -1))
    if merged_into is not None:
        slot_map = torch.where(gone, merged_into, slot_map)
    return torch.where(owner >= 0, slot_map.gather(1, owner.clamp(min=0)), -1)


def _compact(alive: torch.Tensor, cols: torch.Tensor):
    """Drop slots that are not alive (no ranking needed)."""
    n = alive.sum(1)
    kmax = max(int(n.max()), 1)
    key = torch.where(alive, cols.to(torch.float64), torch.full_like(cols, -1, dtype=torch.float64))
    order = key.argsort(dim=1, stable=True)[:, -kmax:]
    return order, alive.gather(1, order)


def warn_switch(model_name: str, old: str, new: str) -> None:
    warnings.warn(f"spatten: switched {model_name} from attn_implementation={old!r} to {new!r} because "
                  f"pruning needs the attention probabilities, which {old!r} does not return", stacklevel=3)
