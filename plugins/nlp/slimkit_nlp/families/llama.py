"""Llama decoders: kept for imports of ``LlamaFamily``; the adapter is the generic
:class:`slimkit_nlp.families.decoder.DecoderFamily` (registered as ``llama`` and as every other
Llama-shaped family, see :mod:`slimkit_nlp.families.decoder`)."""
from __future__ import annotations

from .decoder import SPECS, DecoderFamily


class LlamaFamily(DecoderFamily):
    def __init__(self):
        super().__init__(next(s for s in SPECS if s.name == "llama"))


__all__ = ["LlamaFamily"]
