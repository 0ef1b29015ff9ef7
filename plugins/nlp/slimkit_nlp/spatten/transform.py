"""``apply_spatten(model, config)``: install cascade pruning on a Hugging Face model.

The backbone's ``forward`` is replaced by ``forward.spatten_forward`` (an instance attribute,
so task heads and ``generate()`` go through it); ``remove_spatten`` restores it. The config is
also written into ``model.config.slimkit_spatten`` so ``model.save_pretrained(dir)`` stores it
in ``config.json`` and ``load_pretrained(dir)`` / ``restore(model)`` re-apply it (HF-native path).
"""
from __future__ import annotations

import types
import weakref
from typing import Any

from slimkit.errors import ConfigError, UnsupportedModelError

from ..families import NO_WEIGHTS_IMPLEMENTATIONS, resolve_family
from .config import SpattenConfig
from .forward import spatten_forward
from .runtime import SpattenRuntime, warn_switch

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
    _ensure_weights(model, backbone)
    rt = SpattenRuntime(family, backbone, config)
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
