"""Registers HAT's converters: ``hat-fairseq`` (SubTransformer / SuperTransformer checkpoints of
mit-han-lab/hardware-aware-transformers) and ``hat-predictor`` (its latency predictors)."""
from __future__ import annotations

from slimkit.parts import lazy

from .fairseq_pickle import FAIRSEQ_CLASSES

HAT_FAIRSEQ_OPTIONS = ("subtransformer",)
HAT_PREDICTOR_OPTIONS = ("config", "feature_norm", "lat_norm", "space")


def register_converters(register) -> None:
    from slimkit.convert import Converter

    register(Converter(
        "hat-fairseq", lazy("slimkit_nlp.convert.hat_fairseq:convert"), lazy("slimkit_nlp.convert.hat_fairseq:build"),
        "mit-han-lab/hardware-aware-transformers SubTransformer / SuperTransformer checkpoints -> slimkit "
        "HatForConditionalGeneration (post-LN, sinusoidal positions, scaled shared embeddings)",
        options=HAT_FAIRSEQ_OPTIONS, allow_classes=FAIRSEQ_CLASSES))
    register(Converter(
        "hat-predictor", lazy("slimkit_nlp.convert.hat_predictor:convert"),
        lazy("slimkit_nlp.convert.hat_predictor:build"),
        "HAT's latency predictors (latency_dataset/predictors/*.pt) -> slimkit LatencyPredictor with HAT's "
        "feature and latency normalisation", options=HAT_PREDICTOR_OPTIONS, allow_classes=FAIRSEQ_CLASSES))
