"""The KV-cache argument across transformers 5.x releases.

transformers 5.24 renamed the ``past_key_values`` argument and output field to ``cache`` (the old
name is accepted with a warning until 5.40). slimkit's own models and patched forwards accept both
names, and pass / read the one the installed release uses.
"""
from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=None)
def cache_name() -> str:
    """``"cache"`` on transformers >= 5.24, else ``"past_key_values"``."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def pick_cache(cache: Any = None, past_key_values: Any = None) -> Any:
    """The cache given under either name (``ValueError`` if both are given)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the KV cache once: as cache= (transformers >= 5.24) or past_key_values=, not both")
    return cache if cache is not None else past_key_values


def cache_kwargs(cache: Any) -> dict:
    """``{name: cache}`` under the installed release's name, for forward calls and output classes."""
    return {cache_name(): cache}


def output_cache(output: Any) -> Any:
    """The cache carried by a model output (``None`` if it has none)."""
    return getattr(output, cache_name(), None)


class TransformersTooOldError(ImportError):
    """A slimkit model module needs a newer transformers than the one installed (raised at its import)."""


def require_dataclass_configs(what: str) -> None:
    """``TransformersTooOldError`` naming ``what`` and the fix when transformers' ``PreTrainedConfig`` is not
    yet a dataclass (configs declared as typed fields need it; transformers 5.2, which kvpress pins, is older)."""
    import dataclasses

    import transformers

    base = getattr(transformers, "PreTrainedConfig", None)
    if base is None or not dataclasses.is_dataclass(base):
        raise TransformersTooOldError(
            f"{what} needs a transformers whose PreTrainedConfig is a dataclass (5.24 is tested); this environment "
            f"has transformers {transformers.__version__}: pip install -U 'transformers>=5.24'")
