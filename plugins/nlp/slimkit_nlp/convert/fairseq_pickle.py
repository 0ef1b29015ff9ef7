"""What fairseq pickles beside the weights, allowed as data (never as code) for the fairseq converters.

fairseq's ``checkpoint_utils.save_state`` stores its command-line options as an ``argparse.Namespace``
(``"args"``) and, in a full training checkpoint, its training meters (``fairseq.meters.AverageMeter``,
``TimeMeter``, ``StopwatchMeter``) in ``extra_state["train_meters"]``. Both are loaded with
``weights_only=True``: the Namespace as itself, the meters as :class:`FairseqMeterState` (attributes
only). fairseq is never imported and nothing in the file runs. Imported at plugin registration, so it
needs nothing but the standard library.
"""
from __future__ import annotations

import argparse

#: fairseq's meter classes a training checkpoint may pickle (``fairseq/meters.py``)
FAIRSEQ_METERS = ("AverageMeter", "TimeMeter", "StopwatchMeter")


class FairseqMeterState:
    """Stand-in for fairseq's training meters (``fairseq.meters.AverageMeter``, ``TimeMeter``,
    ``StopwatchMeter``): the unpickler fills this class's attributes with the stored numbers (e.g.
    ``val``, ``avg``, ``sum``, ``count``); no fairseq code exists or runs. ``Checkpoint.objects`` holds
    them as plain dicts of those attributes."""


#: ``Converter.allow_classes`` of every fairseq kind: its argparse options and its meters (attributes only)
FAIRSEQ_CLASSES = (argparse.Namespace, *((FairseqMeterState, f"fairseq.meters.{name}") for name in FAIRSEQ_METERS))
