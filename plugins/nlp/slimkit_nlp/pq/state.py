"""Progressive quantization's runtime state, in one place.

``apply_progressive_quant`` creates one :class:`PQRuntime` per model and stores it on the model
(``MODEL_RUNTIME_ATTR``) and on each self-attention module (``RUNTIME_ATTR``, with the module's layer
index under ``LAYER_ATTR``). The attention function and the cache read it through the accessors
here, so the attribute names are written once. This module imports nothing else of ``pq``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the attention implementation's name in transformers' ``AttentionInterface``
ATTENTION_NAME = "slimkit_pq"
#: attribute of each attention module holding the shared :class:`PQRuntime`
RUNTIME_ATTR = "slimkit_pq"
#: attribute of each attention module holding its layer index (int)
LAYER_ATTR = "slimkit_pq_layer"
#: attribute of the model holding its :class:`PQRuntime`
MODEL_RUNTIME_ATTR = "_slimkit_pq_runtime"


@dataclass
class PQRuntime:
    """State shared by the attention modules of one model (each module also holds its layer index).

    ``config``: the ``ProgressiveQuantConfig``; ``stats``: the ``PQStats`` of the last forward (or
    of the current ``generate`` call); ``in_generate``: inside ``generate`` (stats accumulate);
    ``last_cache``: the cache of the last forward, for inspection.
    """

    config: Any
    stats: Any
    in_generate: bool = False
    last_cache: object = None


def runtime_of(obj) -> PQRuntime | None:
    """The progressive-quant state of a model or of one of its attention modules (``None`` if not applied)."""
    d = getattr(obj, "__dict__", {})
    return d.get(MODEL_RUNTIME_ATTR) or d.get(RUNTIME_ATTR)


def layer_index_of(module) -> int:
    """The layer index ``apply`` gave an attention module (``-1`` if it has none)."""
    return module.__dict__.get(LAYER_ATTR, -1)


def attach_runtime(model, attention_modules, runtime: PQRuntime) -> None:
    """Store ``runtime`` on ``model`` and on each attention module with its layer index (in order)."""
    model.__dict__[MODEL_RUNTIME_ATTR] = runtime
    for i, m in enumerate(attention_modules):
        m.__dict__[RUNTIME_ATTR] = runtime
        m.__dict__[LAYER_ATTR] = i
