"""``apply_progressive_quant(model, config)``: switch a Hugging Face model to ``slimkit_pq`` attention."""
from __future__ import annotations

import logging
import types

from torch import nn

from slimkit.errors import ConfigError, SlimkitError, UnsupportedModelError
from slimkit_nlp.compat import cache_name, output_cache, pick_cache
from slimkit_nlp.families import resolve_family

from .attention import register
from .config import LAYOUT_GROUPED, ProgressiveQuantConfig
from .state import ATTENTION_NAME as NAME
from .state import PQRuntime, attach_runtime, runtime_of
from .stats import PQStats

log = logging.getLogger("slimkit.nlp.pq")
def pq_stats(model) -> PQStats:
    """Stats of the last forward (or the last ``generate`` call as a whole)."""
    rt = runtime_of(model)
    if rt is None:
        raise SlimkitError("this model has no progressive-quant state; "
                                    "apply it first: slimkit.apply(model, 'progressive-quant')")
    return rt.stats


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """Self-attention modules (what HF passes to attention functions), in layer order."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"progressive-quant needs a Hugging Face transformer (torch.nn.Module), "
                                    f"got {type(model).__name__}")
    return list(resolve_family(model).attention_modules(model))  # UnsupportedModelError lists the families


def _reset_hook(module, args, kwargs):
    rt = runtime_of(module)
    if rt is not None and not rt.in_generate:
        rt.stats.reset()


def _record_cache(rt: PQRuntime, cache) -> None:
    from .cache import PQCache

    caches = [cache, getattr(cache, "self_attention_cache", None)]
    cache = next((c for c in caches if isinstance(c, PQCache)), None)
    if cache is not None:
        rt.last_cache = cache
        rt.stats.cache_bytes = cache.nbytes()
        import torch
        rt.stats.cache_fp32_bytes = cache.plain_bytes(torch.float32)
        rt.stats.cache_bf16_bytes = cache.plain_bytes(torch.bfloat16)


def _output_hook(module, args, kwargs, output):
    rt = runtime_of(module)
    if rt is not None and not rt.in_generate:
        cache = pick_cache(kwargs.get("cache"), kwargs.get("past_key_values"))
        if cache is None:
            cache = output_cache(output)
        _record_cache(rt, cache)


def _pq_generate(self, *args, **kwargs):
    """``generate`` with stats over the whole call (bound to the instance; deep copies rebind)."""
    rt = runtime_of(self)
    if rt is None:
        return type(self).generate(self, *args, **kwargs)
    rt.stats.reset()
    rt.last_cache = None
    rt.in_generate = True
    try:
        out = type(self).generate(self, *args, **kwargs)
    finally:
        rt.in_generate = False
    _record_cache(rt, pick_cache(kwargs.get("cache"), kwargs.get("past_key_values")) or rt.last_cache)
    return out


def _pq_prepare_cache(self, generation_config, model_kwargs, *args, **kwargs):
    """Give ``generate`` a ``PQCache`` unless the caller passed a cache or a cache implementation."""
    rt = runtime_of(self)
    if (rt is not None and rt.config.cache and pick_cache(model_kwargs.get("cache"), model_kwargs.get("past_key_values"))
            is None and generation_config.use_cache is not False and generation_config.cache_implementation is None):
        from .cache import PQCache
        model_kwargs[cache_name()] = rt.last_cache = PQCache(self)
    return type(self)._prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs)


def _wrap_generate(model) -> None:
    if not hasattr(model, "generate"):
        return
    model.generate = types.MethodType(_pq_generate, model)
    if hasattr(type(model), "_prepare_cache_for_generation"):
        model._prepare_cache_for_generation = types.MethodType(_pq_prepare_cache, model)


def _max_positions(model) -> int | None:
    """The longest sequence the model's position embeddings cover (``None`` when it does not say)."""
    cfg = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def check_positions(model, config: ProgressiveQuantConfig) -> None:
    """``ConfigError`` when the grouped layout would never quantize a key within the model's positions: keys
    leave the float16 window only in whole groups of ``key_group`` beyond the newest ``residual_length``."""
    limit = _max_positions(model)
    if config.layout != LAYOUT_GROUPED or limit is None or config.key_group + config.residual_length <= limit:
        return
    raise ConfigError(f"key_group={config.key_group} + residual_length={config.residual_length} = "
                      f"{config.key_group + config.residual_length} tokens exceed the {limit} positions of this "
                      f"{type(model).__name__}, so no key would ever be quantized and the cache would stay float16; "
                      f"lower key_group or residual_length so that their sum is at most {limit}")


def apply_progressive_quant(model, config: ProgressiveQuantConfig):
    """Quantize attention inputs progressively (in place); returns ``model``."""
    modules = _attention_modules(model)
    from .grouped import check_dims

    for m in modules[:1]:
        head_dim = getattr(m, "head_dim", None)
        if isinstance(head_dim, int):
            check_dims(config, head_dim)  # ConfigError naming head_dim and the group / width
    check_positions(model, config)
    register()
    stats = PQStats(msb_bits=config.msb_bits, lsb_bits=config.lsb_bits, value_bits=config.value_bits)
    rt = PQRuntime(config=config, stats=stats)
    first = runtime_of(model) is None
    attach_runtime(model, modules, rt)
    current = model.config._attn_implementation
    if current != NAME:
        if current not in (None, "eager"):
            log.warning("progressive-quant: switching attention from %r to %r (it quantizes the attention "
                        "inputs and returns the probabilities like eager)", current, NAME)
        model.set_attn_implementation(NAME)
        if model.config._attn_implementation != NAME:  # models that refuse dynamic switching
            for sub in model.modules():
                if hasattr(sub, "config") and hasattr(sub.config, "_attn_implementation_internal"):
                    sub.config._attn_implementation_internal = NAME
    if first:
        model.register_forward_pre_hook(_reset_hook, with_kwargs=True)
        model.register_forward_hook(_output_hook, with_kwargs=True)
        _wrap_generate(model)
    return model
