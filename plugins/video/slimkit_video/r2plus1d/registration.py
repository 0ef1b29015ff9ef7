"""Registers the ``r2plus1d`` technique and the ``r3d-18`` / ``r2plus1d-18`` builders.

Its benchmarks are registered by :mod:`slimkit_video.benchmarks`.
"""
from slimkit.parts import lazy, technique

from .config import R2Plus1DConfig


def register_techniques(register) -> None:
    register(technique(R2Plus1DConfig, lazy("slimkit_video.r2plus1d.transform:apply_r2plus1d")))


def _r3d(**options):
    from .models import r3d_18
    return r3d_18(**options)


def _r2plus1d(**options):
    from .models import r2plus1d_18
    return r2plus1d_18(**options)


def register_models(register) -> None:
    register("r3d-18", _r3d, "R3D-18-style 3D ResNet; options depth (10/18/26/34), width, num_classes, "
                             "in_channels, clip_len, dropout; input (N, C, T, H, W)")
    register("r2plus1d-18", _r2plus1d, "R(2+1)D-18 with a parameter-matched width per conv; options as r3d-18 "
                                       "plus mid_width ('per-conv' or torchvision's 'per-block')")
