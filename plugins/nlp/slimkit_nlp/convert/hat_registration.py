"""Registers HAT's converters: ``hat-fairseq`` (SubTransformer / SuperTransformer checkpoints of
mit-han-lab/hardware-aware-transformers) and ``hat-predictor`` (its latency predictors)."""
from __future__ import annotations

import argparse

from slimkit.parts import lazy


class FairseqMeterState:
    """Stand-in for fairseq's training meters (``fairseq.meters.AverageMeter``, ``TimeMeter``,
    ``StopwatchMeter``), which fairseq pickles into a checkpoint's ``extra_state``: the unpickler fills
    this class's attributes with the stored numbers; no fairseq code exists or runs."""


#: what fairseq pickles beside the weights: its argparse options and its meters (attributes only, no code)
FAIRSEQ_CLASSES = (argparse.Namespace,
                   *((FairseqMeterState, f"fairseq.meters.{name}")
                     for name in ("AverageMeter", "TimeMeter", "StopwatchMeter")))
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
