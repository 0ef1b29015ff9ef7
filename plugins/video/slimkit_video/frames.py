"""Decoded RGB frames -> the model's input tensor: one conversion for training and streaming alike.

A model sees pixels normalised as ``(pixel / 255 - mean) / std`` per channel, channels first.
Training (``data.VideoDataset``, ``data.SyntheticTemporalDataset``, the benchmarks' clip datasets)
and streaming (``online.live.OnlineModel.preprocess``, fed by ``sources``) both call
:func:`frames_to_tensor`, so a frame gives the same tensor on either path. ``normalization_for``
says which ``mean``/``std`` a backbone was trained with.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from slimkit.errors import ShapeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalization_for(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` the backbone was trained with: HF MobileNet uses 0.5/0.5, others ImageNet's."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", "") or ""
    if kind.startswith("mobilenet"):
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return IMAGENET_MEAN, IMAGENET_STD


def _channel_values(values: Sequence[float]) -> torch.Tensor:
    """Three per-channel values as a float32 ``(3, 1, 1)`` tensor (broadcasts over ``(..., 3, H, W)``)."""
    return torch.as_tensor(values, dtype=torch.float32).reshape(3, 1, 1)


def frames_to_tensor(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB uint8 frames ``(..., H, W, 3)`` -> contiguous float32 ``(..., 3, H, W)``, ``(pixel / 255 - mean) / std``.

    ``mean`` and ``std`` hold one value per channel (R, G, B) on 0..1 pixels, e.g. ImageNet's
    ``(0.485, 0.456, 0.406)`` and ``(0.229, 0.224, 0.225)``. One frame ``(H, W, 3)`` gives
    ``(3, H, W)``; a clip ``(T, H, W, 3)`` gives ``(T, 3, H, W)``. Resizing is the caller's.
    """
    if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ShapeError(f"frames must be RGB uint8 of shape (..., H, W, 3), got {frames.dtype} {frames.shape}; "
                         f"decode them as RGB 0-255 pixels")
    x = torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3).float().div_(255.0)
    return ((x - _channel_values(mean)) / _channel_values(std)).contiguous()
