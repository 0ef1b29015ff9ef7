"""Registers the ``r2plus1d`` technique and the ``r3d-18`` / ``r2plus1d-18`` builders.

Its benchmarks are registered by :mod:`slimkit_video.benchmarks`.
"""
import slimkit

from .config import R2Plus1DConfig


def _apply(model, config):
    from .transform import apply_r2plus1d
    return apply_r2plus1d(model, config)


def register_techniques(register) -> None:
    register(slimkit.Technique(
        "r2plus1d", R2Plus1DConfig, _apply,
        "Split 3D convolutions into spatial 1xkxk + temporal tx1x1 ones (R(2+1)D, P3D), "
        "data-free from trained weights by truncated SVD"))


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
