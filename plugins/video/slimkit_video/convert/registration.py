"""Registers the video checkpoint converters (``slimkit convert --list``); their modules load on first use."""
from __future__ import annotations

import argparse

from slimkit.parts import lazy

#: torchvision's training script pickles its argparse options beside the weights (attributes only, no code)
TORCHVISION_CLASSES = (argparse.Namespace,)
TSM_OPTIONS = ("n_segment", "shift_div", "direction", "place", "temporal_pool", "dropout")


def register_converters(register) -> None:
    from slimkit.convert import Converter

    module = "slimkit_video.convert.torchvision_video"
    register(Converter(
        "torchvision-r3d", lazy(f"{module}:convert_r3d"), lazy(f"{module}:build"),
        "torchvision's r3d_18 (state dict or training checkpoint) -> slimkit r3d-18",
        options=("prefix",), allow_classes=TORCHVISION_CLASSES))
    register(Converter(
        "torchvision-r2plus1d", lazy(f"{module}:convert_r2plus1d"), lazy(f"{module}:build"),
        "torchvision's r2plus1d_18 -> slimkit r2plus1d-18, mid_width='per-block' (the same network)",
        options=("prefix",), allow_classes=TORCHVISION_CLASSES))
    register(Converter(
        "tsm-repo", lazy("slimkit_video.convert.tsm_repo:convert"), lazy("slimkit_video.convert.tsm_repo:build"),
        "mit-han-lab/temporal-shift-module checkpoints (TSN/TSM ResNet, MobileNetV2, online demo) -> "
        "VideoClassifier with tsm", options=TSM_OPTIONS))
