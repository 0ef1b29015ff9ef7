"""Lite Transformer: Long-Short Range Attention (LSRA) blocks and Hugging Face models.

    from slimkit_nlp.lsra import LiteTransformerConfig, LiteTransformerForCausalLM
    model = LiteTransformerForCausalLM(LiteTransformerConfig(d_model=256, decoder_layers=6))

Importing the models (this package's attributes or ``slimkit_nlp.lsra.modeling``) registers them
with ``AutoConfig``, ``AutoModelForCausalLM`` and ``AutoModelForSeq2SeqLM``. Submodules are loaded
lazily so that the command line starts fast.
"""
from __future__ import annotations

from slimkit.parts import lazy_exports

_EXPORTS = {
    "LiteTransformerConfig": ".modeling", "LiteTransformerForCausalLM": ".modeling",
    "LiteTransformerForConditionalGeneration": ".modeling", "LiteTransformerModel": ".modeling",
    "register_auto_classes": ".modeling",
    "LSRA": ".modules", "ConvBranch": ".modules", "LightweightConv": ".modules", "DynamicConv": ".modules",
    "LSRAConfig": ".config", "apply_lsra": ".transform",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
