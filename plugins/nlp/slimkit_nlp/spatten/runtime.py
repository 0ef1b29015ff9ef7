"""The SpAtten runtime: per-model settings (``SpattenRuntime``), the output type and the helpers the
forwards in ``forward.py`` share (choosing kept tokens, the cache cut after a full prefill, cache
selection, the budget check).

Decoders keep one ``PruneState`` (``state.py``) on the cache object across ``generate()`` steps, so
cached keys/values can be evicted in later steps and new tokens keep their original absolute
positions (learned or rotary) whatever the cache length. Vocabulary: a *column* is a token's index in
the full input (left padding included); a *slot* is a position in a (pruned) tensor; ``valid`` marks
slots holding real tokens.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

from .policies import get_policy
from .schedule import count_for, keep_schedule, kv_budget_schedule, select_slots
from .scores import rank_heads, rank_tokens
from .state import PruneState, record_eviction
from .stats import SpattenStats
from .window import measure_recent_share, newest_kept, protected


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
    """PyTorch's fused attention, ``(B, L, H, d)``; ``k``/``v`` with fewer (grouped) heads are read in place
    (``enable_gqa``: no repeated copies of the cache every step)."""
    gqa = k.shape[1] != q.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                                            enable_gqa=gqa).transpose(1, 2)


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
    observed = obs if rt.policy.needs_observation else None
    if cfg.kv_heads == "separate":
        _cut_each_kv_head(state, cfg, rt, cache, layer, observed, probs, cols, valid, k)
        return
    lay = None if hasattr(cache, "select_tokens") else cache.layers[layer]   # packed caches: no plain tensors
    rank = rank_tokens(state, rt.policy, cols, True, layer, observed, probs,
                       *((lay.keys, lay.values) if lay is not None else (None, None)))
    sel = select_slots(rank, valid, protected(state, cfg, cols, k, True, layer), k, cols, pad_first=True)
    if sel is None:
        return
    index, new_valid = sel
    record_eviction(state, cols, valid & ~torch.zeros_like(valid).scatter(1, index, new_valid), layer)
    _cache_select(cache, layer, index)
    state.slots[layer] = (cols.gather(1, index), new_valid)


def _cut_each_kv_head(state: PruneState, cfg, rt: SpattenRuntime, cache, layer: int, observed, probs, cols, valid,
                      k: torch.Tensor) -> None:
    """``kv_heads="separate"``: each key/value head of ``layer`` keeps its own ``k (B,)`` slots of ``cols
    (B, n)`` by ``policy.score_heads``; protected slots (sinks, the newest, the recent window) stay in every
    head. The layer's slot map becomes per head: ``(cols (B, Hkv, k), valid (B, Hkv, k))``. A column
    counts as evicted from the layer once no head keeps it."""
    if hasattr(cache, "select_tokens"):
        from slimkit.errors import ConfigError
        raise ConfigError(f"kv_heads='separate' needs a cache that stores keys and values as tensors; "
                          f"{type(cache).__name__} selects whole tokens only: use kv_heads='shared' with it")
    lay = cache.layers[layer]
    b, hk, n = cols.shape[0], lay.keys.shape[1], cols.shape[1]
    rank = rank_heads(state, rt.policy, cols, layer, hk, observed, probs, lay.keys, lay.values)   # (B, Hkv, n)
    flat = lambda t: t.unsqueeze(1).expand(-1, hk, -1).reshape(b * hk, -1)  # noqa: E731
    sel = select_slots(rank.reshape(b * hk, n), flat(valid), flat(protected(state, cfg, cols, k, True, layer)),
                       k.repeat_interleave(hk), flat(cols), pad_first=True)
    if sel is None:
        return
    index, new_valid = (t.view(b, hk, -1) for t in sel)
    kept_cols = cols.unsqueeze(1).expand(-1, hk, -1).gather(2, index)
    in_any = torch.zeros(b, hk, n, dtype=torch.bool, device=cols.device).scatter(2, index, new_valid).any(1)
    record_eviction(state, cols, valid & ~in_any, layer)
    for name in ("keys", "values"):
        x = getattr(lay, name)
        setattr(lay, name, x.gather(2, index[..., None].expand(-1, -1, -1, x.shape[-1])))
    state.slots[layer] = (kept_cols, new_valid)


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
