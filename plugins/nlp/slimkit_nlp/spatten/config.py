"""``SpattenConfig``: cascade token and head pruning options (SpAtten, HPCA 2021)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Union

from slimkit import ConfigError, TechniqueConfig

POLICIES = ("spatten", "window", "window_group", "spatten_window", "observed", "observed_values", "per_layer", "random", "streaming", "h2o")   # built-ins


@dataclass
class SpattenConfig(TechniqueConfig):
    """Options of ``slimkit.apply(model, "spatten", ...)``.

    token_keep: encoders: average share of each input's real tokens kept over the token-pruned layers
        (1.0 = no token pruning). Decoders: the KV budget, the share of the keys and values kept in the
        cache counted over *all* layers (``kv_budget_schedule``); the first layers keep everything and
        later ones less, so the cascade still shortens prefill. Generation keeps the cache within
        ``token_keep`` of all tokens seen.
    head_keep: average share of head units kept over the head-pruned layers (1.0 = none pruned).
    value_keep: local value pruning: per query, keep this share of the values with the largest
        probabilities (1.0 = off; it changes results but saves no CPU time, see the README).
    protect_tokens: token ids never pruned, on top of the first and last real token and the
        family's special tokens (CLS, SEP, BOS found in the model config).
    token_start / head_start: share of the first layers without token / head pruning
        (at least one layer for tokens).
    token_slope: how steeply the keep ratio falls over the pruned layers: they keep from
        ``token_keep + g`` down to ``token_keep - g`` with ``g = token_slope * min(token_keep,
        1 - token_keep)`` (0 = flat; the same slope is used for heads).
    policy: the name of a registered ``TokenPolicy`` (``slimkit_nlp.spatten.policies``): ``spatten``
        (cumulative attention, normalised by the number of queries that could see a token in causal
        models) is the paper's score; ``window`` scores by the attention of the newest prompt queries in
        each layer (a question at the end of the prompt steers what is kept) and ``spatten_window``
        averages both; ``observed`` averages the attention received from every prompt query with the
        window's (with ``prefill_pruning=False, kv_heads="separate"``: the quality setting, best on both
        fidelity and retrieval in ``slimkit bench spatten-llm``), and ``observed_values`` weighs that by each
        value's norm (the same top-1, a lower KL at 50% KV, fewer retrieved facts); ``per_layer``, ``random``,
        ``streaming`` (sinks + recent window) and ``h2o`` (accumulated attention + recent window) are
        baselines. ``register_policy`` adds your own.
    prefill_pruning: decoders: ``True`` (SpAtten's cascade): pruned tokens leave later layers during
        prefill, which shortens it (time to first token). ``False``: every layer sees the whole prompt and
        its cached keys/values are cut to ``token_keep`` right after its attention (each layer the same
        share, as kvpress presses do; no shorter prefill, better fidelity).
    observe_queries: decoders: how many of the newest prompt queries the ``window`` policies (and
        ``recent_share="auto"``) observe in each pruned layer at prefill.
    protect_recent: decoders: the newest ``protect_recent`` tokens are never evicted (0 = only the
        newest token, which predicts the next one).
    sink_tokens: decoders: the first real tokens always kept by ``spatten`` and ``streaming`` (attention
        sinks, as in StreamingLLM; encoders keep the first and last token).
    recent_share: decoders: share of each layer's budget kept for the newest tokens (a local window);
        the rest goes by the policy's score. ``"auto"`` measures it per layer and per input at prefill:
        of several shares, the one whose kept set receives the most attention from the newest 32
        prompt queries wins (local models get a wide window, models with heavy hitters a narrow one).
        None = the policy's ``default_recent_share``: ``"auto"`` for ``spatten``, 0.5 for ``h2o`` (as in
        H2O), 0 for the others (``streaming`` is a window by definition).
    generation_pruning: decoders: keep evicting during ``generate()`` so the cache stays within
        ``token_keep`` of all tokens seen (bounded memory for long generations). Off by default: the
        prompt's cache is cut once, at prefill, and generated tokens are kept, as kvpress presses do;
        evicting while generating cost a lot of fidelity on SmolLM2 (``slimkit bench spatten-llm``).
    evict_chunk: when a layer's cache exceeds its budget, evict down to ``budget - evict_chunk + 1``
        tokens at once, so the ranking runs about once every ``evict_chunk`` steps (1 = every step).
    kv_heads: decoders with ``prefill_pruning=False``: ``"shared"``: every key/value head of a layer keeps
        the same tokens; ``"separate"``: each key/value head keeps its own tokens (the same number per
        head, so the budget is unchanged), ranked by the policy's ``score_heads`` (the attention of that
        head's group of query heads), as kvpress presses do. Heads attend to different tokens, so this is
        the more faithful cache at the same budget; it needs ``prefill_pruning=False`` (the cascade
        removes whole tokens from the hidden states), ``head_keep=1`` and ``generation_pruning=False``.
    seed: seed of the ``random`` policy.
    pruned_tokens: what happens to a pruned token in encoders: ``drop`` (SpAtten: it is gone) or
        ``merge`` (it is still gone from later layers, but first folded into its most similar kept
        token, size-weighted as in ToMe, Bolya et al. 2023; later layers add log(size) to the
        attention logits of merged keys, and ``kept_token_weights`` counts the tokens each kept token
        stands for, so a mean-pooled embedding keeps the pruned tokens' share). Decoders always drop.
    """

    technique: ClassVar[str] = "spatten"
    # 2: pruned_tokens; recent_share for every policy (auto for spatten)
    # 3: decoders read token_keep as the KV budget over all layers (kv_budget), policies are registered classes
    version: ClassVar[int] = 3

    token_keep: float = 0.5
    head_keep: float = 1.0
    value_keep: float = 1.0
    protect_tokens: Optional[list[int]] = None
    token_start: float = 0.15
    token_slope: float = 0.25
    head_start: float = 0.3
    policy: str = "spatten"
    protect_recent: int = 0
    sink_tokens: int = 4
    recent_share: Union[float, Literal["auto"], None] = None
    generation_pruning: bool = False
    evict_chunk: int = 8
    seed: int = 0
    pruned_tokens: Literal["drop", "merge"] = "drop"
    observe_queries: int = 32
    prefill_pruning: bool = True
    #: decoders: ``"kv"`` = token_keep is the KV budget over all layers; ``"pruned_layers"`` = the mean
    #: keep ratio over the pruned layers only (what version-2 configs meant)
    decoder_budget: Literal["kv", "pruned_layers"] = "kv"
    kv_heads: Literal["shared", "separate"] = "shared"

    @classmethod
    def migrate(cls, data: dict, from_version: int) -> dict:
        if from_version < 2:              # version 1: recent_share (0.5) and sink_tokens applied to h2o / streaming only
            data = dict(data)
            policy = data.get("policy", "spatten")
            data["recent_share"] = data.get("recent_share", 0.5) if policy == "h2o" else 0.0
            if policy == "spatten":
                data["sink_tokens"] = 1   # version 1 protected only the first token
        if from_version < 3:              # versions 1-2: token_keep averaged over the pruned layers only
            data = dict(data)
            data.setdefault("decoder_budget", "pruned_layers")
            # versions 1-2 evicted during generation by default (a no-op, now refused, when nothing is pruned)
            data.setdefault("generation_pruning", data.get("token_keep", cls.token_keep) < 1.0)
        return data

    def window_share(self) -> Union[float, str]:
        """``recent_share`` with the policy's default filled in: a float, or ``"auto"``."""
        if self.recent_share is not None:
            return self.recent_share
        from .policies import get_policy
        return get_policy(self.policy).default_recent_share

    def validate(self) -> None:
        for name in ("token_keep", "head_keep", "value_keep"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1] (the share kept), got {v}; use e.g. {name}=0.5")
        for name in ("token_start", "head_start", "token_slope") + (
                ("recent_share",) if isinstance(self.recent_share, float) else ()):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {v}")
        from .policies import get_policy
        get_policy(self.policy)                       # ConfigError listing the registered policies
        if self.observe_queries < 1:
            raise ConfigError(f"observe_queries must be >= 1, got {self.observe_queries}")
        if self.evict_chunk < 1:
            raise ConfigError(f"evict_chunk must be >= 1, got {self.evict_chunk}")
        if self.protect_recent < 0:
            raise ConfigError(f"protect_recent must be >= 0, got {self.protect_recent}")
        if self.sink_tokens < 0:
            raise ConfigError(f"sink_tokens must be >= 0, got {self.sink_tokens}")
        if self.protect_tokens is not None and any(t < 0 for t in self.protect_tokens):
            raise ConfigError("protect_tokens must hold token ids >= 0")
        self._validate_kv_heads()
        # settings that would make a part of the technique silently do nothing
        if self.token_keep < 1.0 and self.token_start >= 1.0:
            raise ConfigError(f"token_start=1.0 leaves no layer to prune tokens in, so token_keep={self.token_keep:g} "
                              f"would never act; use token_start < 1 (e.g. 0.15)")
        if self.head_keep < 1.0 and self.head_start >= 1.0:
            raise ConfigError(f"head_start=1.0 leaves no layer to prune heads in, so head_keep={self.head_keep:g} "
                              f"would never act; use head_start < 1 (e.g. 0.3)")
        if self.token_keep >= 1.0:
            flags = [(self.pruned_tokens == "merge", "pruned_tokens='merge' has no pruned token to merge",
                      "pruned_tokens='drop'"),
                     (self.generation_pruning, "generation_pruning=True has nothing to evict", "generation_pruning=False"),
                     (not self.prefill_pruning, "prefill_pruning=False has no cache to compress",
                      "prefill_pruning=True")]
            for on, what, off in flags:
                if on:
                    raise ConfigError(f"{what} at token_keep=1.0 (no token is pruned); lower token_keep (e.g. 0.5) "
                                      f"or drop the option ({off})")

    def _validate_kv_heads(self) -> None:
        if self.kv_heads != "separate":
            return
        clashes = [(self.prefill_pruning, "prefill_pruning=True (the cascade removes whole tokens, for every head)",
                    "prefill_pruning=False"),
                   (self.head_keep < 1.0, f"head_keep={self.head_keep:g}", "head_keep=1.0"),
                   (self.generation_pruning, "generation_pruning=True", "generation_pruning=False")]
        for on, what, fix in clashes:
            if on:
                raise ConfigError(f"kv_heads='separate' cannot be combined with {what}; use {fix} with it, "
                                  f"or kv_heads='shared'")
