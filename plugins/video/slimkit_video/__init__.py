"""slimkit video plugin: temporal shift (TSM), (2+1)D convolutions, online streaming inference.

Install with ``pip install 'slimkit[video]'``. Names below are imported lazily (importing
``slimkit_video`` does not import transformers, decord or accelerate).
"""
from __future__ import annotations

from slimkit.parts import lazy_exports

_LAZY = {
    "temporal_shift": "slimkit_video.tsm.shift",
    "TemporalShift": "slimkit_video.tsm.modules",
    "TSMConfig": "slimkit_video.tsm.config",
    "VideoClassifier": "slimkit_video.classifier",
    "to_online": "slimkit_video.online",
    "export_onnx": "slimkit_video.online",
    "OnlineStream": "slimkit_video.online",
    "CausalConv3d": "slimkit_video.online",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = list(_LAZY)
