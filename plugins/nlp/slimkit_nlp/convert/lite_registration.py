"""Registers ``lite-transformer-fairseq`` (checkpoints of mit-han-lab/lite-transformer)."""
from __future__ import annotations

from slimkit.parts import lazy

from .fairseq_pickle import FAIRSEQ_CLASSES


def register_converters(register) -> None:
    from slimkit.convert import Converter

    register(Converter(
        "lite-transformer-fairseq", lazy("slimkit_nlp.convert.lite_fairseq:convert"),
        lazy("slimkit_nlp.convert.lite_fairseq:build"),
        "mit-han-lab/lite-transformer fairseq checkpoints (translation / summarisation encoder-decoders, language "
        "models) -> slimkit Lite Transformer model with the original layout (post-LN, sinusoidal positions, scaled "
        "shared embeddings, fairseq's conv padding order)",
        options=("pad_token_id", "eos_token_id", "bos_token_id"), allow_classes=FAIRSEQ_CLASSES))
