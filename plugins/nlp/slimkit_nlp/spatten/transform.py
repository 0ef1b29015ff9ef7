"""``apply_spatten(model, config)``: install cascade pruning on a Hugging Face model.

The backbone's ``forward`` is replaced by ``forward.spatten_forward`` (an instance attribute,
so task heads and ``generate()`` go through it); ``remove_spatten`` restores it. The config is
also written into ``model.config.slimkit_spatten`` so ``model.save_pretrained(dir)`` stores it
in ``config.json`` and ``load_pretrained(dir)`` / ``restore(model)`` re-apply it (HF-native path).
"""
from __future__ import annotations

import math
import types
import weakref
from typing import Any

from slimkit.errors import ConfigError, UnsupportedModelError

from ..families import NO_WEIGHTS_IMPLEMENTATIONS, resolve_family
from .config import SpattenConfig
from .forward import spatten_forward
from .runtime import SpattenRuntime, warn_switch
from .schedule import keep_schedule

CONFIG_KEY = "slimkit_spatten"


def _ensure_weights(model, backbone) -> None:
    """Switch sdpa/flash attention to eager (with a warning); keep eager and custom functions."""
    impl = backbone.config._attn_implementation or "eager"
    if impl in NO_WEIGHTS_IMPLEMENTATIONS:
        try:
            model.set_attn_implementation("eager")
        except Exception:  # pragma: no cover - older/other models
            backbone.config._attn_implementation = "eager"
        if (backbone.config._attn_implementation or "eager") != "eager":  # pragma: no cover
            backbone.config._attn_implementation = "eager"
        warn_switch(type(model).__name__, impl, "eager")


def _search_keep(ok, lowest: bool) -> float | None:
    """The smallest (``lowest``) or largest keep ratio in 0.01 steps in (0, 1) for which ``ok(keep)``."""
    steps = range(1, 100) if lowest else range(99, 0, -1)
    return next((j / 100 for j in steps if ok(j / 100)), None)


def _last_full(n_layers: int, start: float, min_layers: int) -> int:
    """Layers never pruned at the head of the stack (as ``keep_schedule`` counts them)."""
    return min(n_layers, max(min_layers, math.ceil(start * n_layers - 1e-9)))


def check_pruning_acts(rt: SpattenRuntime, config: SpattenConfig, name: str) -> None:
    """``ConfigError`` when ``token_keep`` / ``head_keep`` ask for pruning that this model's depth and head
    count turn into no pruning at all (or, for heads, into keeping more than asked)."""
    L, n = rt.n_layers, rt.n_units
    if config.token_keep < 1.0 and rt.cascade and all(r >= 1.0 for r in rt.token_ratios):
        if L <= 1:
            raise ConfigError(f"token_keep={config.token_keep:g} cannot prune tokens of this 1-layer {name}, whose "
                              f"only layer scores the tokens and is never pruned; use token_keep=1.0 or a deeper model")
        raise ConfigError(f"token_keep={config.token_keep:g} never prunes a token of this {L}-layer {name}: "
                          f"token_start={config.token_start:g} keeps all {_last_full(L, config.token_start, 1)} "
                          f"layers unpruned; use token_start <= {math.floor((L - 1) / L * 100) / 100:g}")
    if config.head_keep >= 1.0:
        return

    def counts(keep: float) -> list[int]:   # heads each layer asks for (the runtime keeps at least one)
        return [round(r * n) for r in keep_schedule(L, keep, config.head_start, 0, config.token_slope)]

    if n <= 1:
        raise ConfigError(f"head_keep={config.head_keep:g} cannot prune heads of this {name}: its layers have a "
                          f"single head unit (query heads sharing a key/value head count as one) and one always "
                          f"stays; use head_keep=1.0")
    if _last_full(L, config.head_start, 0) >= L:
        raise ConfigError(f"head_keep={config.head_keep:g} never prunes a head of this {L}-layer {name}: "
                          f"head_start={config.head_start:g} keeps all {L} layers unpruned; use head_start <= "
                          f"{math.floor((L - 1) / L * 100) / 100:g}")
    wanted = counts(config.head_keep)
    if all(c >= n for c in wanted):
        best = _search_keep(lambda k: any(c < n for c in counts(k)), lowest=False) or 0.5
        raise ConfigError(f"head_keep={config.head_keep:g} keeps all {n} head units in every layer of this {name} "
                          f"(the share rounds to {n} of {n}), so no head is pruned; use head_keep <= {best:g} or "
                          f"head_keep=1.0 to turn head pruning off")
    if any(c < 1 for c in wanted):
        layer = next(i for i, c in enumerate(wanted) if c < 1)
        least = _search_keep(lambda k: all(c >= 1 for c in counts(k)), lowest=True)
        fix = f"use head_keep >= {least:g}" if least is not None else "use a lower token_slope"
        raise ConfigError(f"head_keep={config.head_keep:g} asks for less than one of the {n} head units of layer "
                          f"{layer} of this {name}, but one always stays, so more heads would be kept than asked; "
                          f"{fix}")


def apply_spatten(model: Any, config: SpattenConfig) -> Any:
    """Make ``model`` prune tokens (and heads) in cascade on every forward; returns ``model``."""
    family = resolve_family(model)
    backbone = family.backbone(model)
    if getattr(backbone.config, "add_cross_attention", False):
        raise UnsupportedModelError(f"{type(model).__name__} has cross-attention layers, which spatten does "
                                    f"not prune; use an encoder-only or decoder-only model")
    if family.causal and config.pruned_tokens == "merge":
        raise ConfigError(f"pruned_tokens='merge' is for encoders; {type(model).__name__} is a decoder, whose "
                          f"pruned tokens are evicted from the KV cache: use pruned_tokens='drop' (the default)")
    rt = SpattenRuntime(family, backbone, config)   # ConfigError for budgets the model cannot meet
    check_pruning_acts(rt, config, type(model).__name__)
    _ensure_weights(model, backbone)
    rt.owners = [weakref.ref(backbone)] + ([weakref.ref(model)] if model is not backbone else [])
    backbone._spatten_runtime = rt
    backbone.forward = types.MethodType(spatten_forward, backbone)
    setattr(backbone.config, CONFIG_KEY, config.to_dict())
    model.spatten_stats = rt.stats
    return model


def remove_spatten(model: Any) -> Any:
    """Undo ``apply_spatten``: the backbone runs its own forward again."""
    family = resolve_family(model)
    bb = family.backbone(model)
    if "forward" in bb.__dict__:
        del bb.forward
    bb.__dict__.pop("_spatten_runtime", None)
    if hasattr(bb.config, CONFIG_KEY):
        delattr(bb.config, CONFIG_KEY)
    return model


def spatten_config(model: Any) -> SpattenConfig | None:
    """The config stored in ``model.config`` (by ``apply`` or by a saved ``config.json``), if any."""
    cfg = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    return SpattenConfig.from_dict(cfg) if isinstance(cfg, dict) else None


def restore(model: Any) -> Any:
    """Re-apply the spatten config saved in ``model.config`` (after ``from_pretrained``); no-op without one."""
    import slimkit

    cfg = spatten_config(model)
    if cfg is None or hasattr(resolve_family(model).backbone(model), "_spatten_runtime"):
        return model
    return slimkit.apply(model, cfg)


def load_pretrained(path, model_class=None, **kwargs) -> Any:
    """``model_class.from_pretrained(path)`` (default ``AutoModel``) with its saved spatten config re-applied."""
    if model_class is None:
        from transformers import AutoModel as model_class
    model = model_class.from_pretrained(path, **kwargs)
    return restore(model)
