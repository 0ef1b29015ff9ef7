"""Model-family adapters: drive a Hugging Face transformer layer by layer, whatever its family.

Techniques that must run the layer loop themselves (SpAtten token/head pruning)
or reach every attention module (progressive quantization) ask this registry
which family a model belongs to::

    from slimkit_nlp.families import resolve_family
    fam = resolve_family(model)          # raises slimkit.UnsupportedModelError listing the families
    bb = fam.backbone(model)             # BertModel / GPT2Model / LlamaModel / Qwen3Model ... inside any task head
    for layer in fam.layers(bb):
        att = fam.attention(layer)       # the module HF passes to attention functions
    fam.causal, fam.positions            # decoder?  "absolute" or "rotary" positions

Built in: ``bert`` (BertModel, RobertaModel, XLMRobertaModel and their heads),
``gpt2`` (GPT2Model and heads) and the Llama-shaped decoders, one generic adapter
(``decoder.DecoderFamily``) registered once per family so that ``fam.name`` tells which:
``llama``, ``mistral``, ``ministral``, ``qwen2``, ``qwen3``, ``phi3``, ``gemma``, ``gemma2``,
``gemma3`` (Gemma3ForCausalLM), ``olmo``, ``olmo2``, ``granite``, ``smollm3``, ``helium``,
``exaone4`` (their ``*Model`` backbones inside any head). Each family's quirks (sandwich norms,
q/k norms, fused projections, soft-capping, sliding windows, per-layer rotary) are listed in
:mod:`slimkit_nlp.families.decoder`. Families with sliding-window or soft-capped attention expose
them through ``fam.sliding_window(layer)`` and ``fam.attention_kwargs(layer)``; techniques that build
their own masks or call the attention function themselves must honour both.

Adding a family (from a plugin's registration module or anywhere before use)::

    from slimkit_nlp.families import FamilyAdapter, register_family
    class MyFamily(FamilyAdapter):
        name = "mine"; causal = True
        def backbone_classes(self): return (MyModel,)
        ...                              # the methods documented in families/base.py
    register_family(MyFamily())

The full per-layer contract (``embed``, ``attn_input``, ``project_qkv``,
``project_out``, ``after_attention``, ``feed_forward``, ``final_norm``,
``rotary``, ``attention_kwargs``, ``sliding_window``) is in :mod:`slimkit_nlp.families.base`; the
built-in adapters in ``bert.py``, ``gpt2.py`` and ``decoder.py`` are examples.

Attention functions: ``attention_function(model)`` returns what
``config._attn_implementation`` resolves to (a function registered through
``transformers.AttentionInterface``, or the family's eager function), and
``returns_weights(model)`` tells whether it returns attention probabilities
(``eager`` and custom functions do; ``sdpa``/flash do not).
"""
from __future__ import annotations

from typing import Any, Callable

from slimkit.errors import UnsupportedModelError

from .base import FamilyAdapter, linear_cols, linear_rows, split_heads, unit_rows
from .decoder import DecoderFamily, DecoderSpec

_FAMILIES: dict[str, FamilyAdapter] = {}

#: implementations that never return attention probabilities
NO_WEIGHTS_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4",
                              "flex_attention", "paged|sdpa", "paged|flash_attention_2")


def register_family(adapter: FamilyAdapter, *, replace: bool = False) -> FamilyAdapter:
    """Add a family adapter (an instance of a ``FamilyAdapter`` subclass); returns it.

    Families are tried in registration order; ``replace=True`` overrides an existing name.
    """
    if not isinstance(adapter, FamilyAdapter):
        raise TypeError(f"register_family expects a FamilyAdapter instance, got {type(adapter).__name__}")
    if not adapter.name:
        raise ValueError("a FamilyAdapter needs a non-empty 'name'")
    if adapter.name in _FAMILIES and not replace:
        raise ValueError(f"family {adapter.name!r} is already registered; pass replace=True to override it")
    _FAMILIES[adapter.name] = adapter
    return adapter


def unregister_family(name: str) -> None:
    _FAMILIES.pop(name, None)


def families() -> dict[str, FamilyAdapter]:
    """Registered families by name (built-ins first)."""
    _ensure_builtins()
    return dict(_FAMILIES)


def get_family(name: str) -> FamilyAdapter:
    """The registered adapter called ``name``; ``UnsupportedModelError`` listing the names otherwise."""
    table = families()
    if name not in table:
        raise UnsupportedModelError(f"no model family {name!r}; registered families are {', '.join(sorted(table))}")
    return table[name]


def supported_families() -> list[str]:
    return list(families())


def resolve_family(model: Any) -> FamilyAdapter:
    """The adapter for ``model``; ``UnsupportedModelError`` listing the supported families otherwise."""
    for fam in families().values():
        try:
            if fam.matches(model):
                return fam
        except ImportError:  # a family whose transformers classes are missing
            continue
    summaries = "; ".join(f"{f.name} ({f.summary})" if f.summary else f.name for f in _FAMILIES.values())
    raise UnsupportedModelError(
        f"{type(model).__name__} is not a supported model family; supported families are {summaries} "
        f"(add one with slimkit_nlp.families.register_family)")


def attention_function(model: Any, family: FamilyAdapter | None = None) -> Callable:
    """The attention function the model's config selects (custom ones from ``AttentionInterface`` included)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    fam = family or resolve_family(model)
    impl = fam.backbone(model).config._attn_implementation
    return ALL_ATTENTION_FUNCTIONS.get_interface(impl, fam.eager_attention())


def attn_implementation(model: Any, family: FamilyAdapter | None = None) -> str:
    fam = family or resolve_family(model)
    return fam.backbone(model).config._attn_implementation or "eager"


def returns_weights(model: Any, family: FamilyAdapter | None = None) -> bool:
    """Whether the active attention implementation returns attention probabilities."""
    return attn_implementation(model, family) not in NO_WEIGHTS_IMPLEMENTATIONS


_BUILTINS_LOADED = False


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from .bert import BertFamily
    from .decoder import decoder_families
    from .gpt2 import GPT2Family

    builtins = {f.name: f for f in (BertFamily(), GPT2Family(), *decoder_families())}
    # built-ins first, then anything a plugin registered before first use
    others = dict(_FAMILIES)
    _FAMILIES.clear()
    _FAMILIES.update(builtins)
    _FAMILIES.update(others)


__all__ = ["FamilyAdapter", "get_family", "DecoderFamily", "DecoderSpec", "register_family", "unregister_family", "families",
           "supported_families", "resolve_family", "attention_function", "attn_implementation", "returns_weights",
           "linear_rows", "linear_cols", "split_heads", "unit_rows", "NO_WEIGHTS_IMPLEMENTATIONS"]
