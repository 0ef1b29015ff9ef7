"""torchvision's video ResNets (``torchvision.models.video``) -> slimkit's ``VideoResNet``.

torchvision names (``r3d_18`` / ``r2plus1d_18``; ``VideoResNet`` with ``BasicBlock``):

    stem.0 conv, stem.1 BN                      (r3d: 3x7x7 conv)
    stem.0 conv_s, stem.1 BN, stem.3 conv_t, stem.4 BN   (r2plus1d: 1x7x7 -> 45 -> 3x1x1 -> 64)
    layerS.B.conv1.0 conv (r3d) | conv1.0.0 conv_s, conv1.0.1 BN, conv1.0.3 conv_t (r2plus1d); conv1.1 BN
    layerS.B.conv2.*  as conv1;   layerS.B.downsample.0 conv 1x1x1, .1 BN;   fc

slimkit's ``VideoResNet`` (``r3d-18`` / ``r2plus1d-18`` builders) names the same layers

    stem.0 (Conv3d, or Conv2Plus1D: spatial, mid.0 BN, temporal), stem.1 BN
    layerS.B.conv1 (Conv3d or Conv2Plus1D), bn1, conv2, bn2, downsample.0/.1;   fc

and computes the same function: torchvision's per-block middle width and stem 45 are slimkit's
``mid_width="per-block"``. Depth (10/18/26/34), width, input channels and classes are read from the
weights. Checkpoints of torchvision's training script (``{"model": ..., "optimizer": ..., "args": ...}``)
work too: the optimizer and scheduler state are listed as unused, ``model_ema`` weights are taken with
``prefix="model_ema.module."``.
"""
from __future__ import annotations

import re

from slimkit.convert import Checkpoint, ConversionError, Converted, WeightMap

from ..r2plus1d.models import STAGES
from .keys import declare_rest_unused, stage_depths, weights_prefix, zero_missing_counters

BLOCK = r"(layer\d\.\d+)"
BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

R3D_RULES = (
    (r"stem\.0\.weight", r"stem.0.weight"),
    (rf"stem\.1\.{BN}", r"stem.1.\1"),
    (rf"{BLOCK}\.conv([12])\.0\.weight", r"\1.conv\2.weight"),
    (rf"{BLOCK}\.conv([12])\.1\.{BN}", r"\1.bn\2.\3"),
    (rf"{BLOCK}\.downsample\.0\.weight", r"\1.downsample.0.weight"),
    (rf"{BLOCK}\.downsample\.1\.{BN}", r"\1.downsample.1.\2"),
    (r"fc\.(weight|bias)", r"fc.\1"),
)

R2PLUS1D_RULES = (
    (r"stem\.0\.weight", r"stem.0.spatial.weight"),
    (rf"stem\.1\.{BN}", r"stem.0.mid.0.\1"),
    (r"stem\.3\.weight", r"stem.0.temporal.weight"),
    (rf"stem\.4\.{BN}", r"stem.1.\1"),
    (rf"{BLOCK}\.conv([12])\.0\.0\.weight", r"\1.conv\2.spatial.weight"),
    (rf"{BLOCK}\.conv([12])\.0\.1\.{BN}", r"\1.conv\2.mid.0.\3"),
    (rf"{BLOCK}\.conv([12])\.0\.3\.weight", r"\1.conv\2.temporal.weight"),
    (rf"{BLOCK}\.conv([12])\.1\.{BN}", r"\1.bn\2.\3"),
    (rf"{BLOCK}\.downsample\.0\.weight", r"\1.downsample.0.weight"),
    (rf"{BLOCK}\.downsample\.1\.{BN}", r"\1.downsample.1.\2"),
    (r"fc\.(weight|bias)", r"fc.\1"),
)


def slimkit_name(key: str, rules) -> str | None:
    """The slimkit name of torchvision key ``key`` (``None`` when no rule knows it)."""
    for pattern, repl in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def _depth(weights: dict, kind: str) -> int:
    depths = stage_depths(weights)
    depth = next((d for d, stages in STAGES.items() if stages == depths), None)
    if depth is None:
        raise ConversionError(f"the checkpoint's stages hold {depths} blocks, which matches no depth slimkit's "
                              f"VideoResNet builds ({', '.join(f'{d}: {s}' for d, s in STAGES.items())}); it is not "
                              f"a {kind} checkpoint")
    return depth


def _check_r3d(weights: dict) -> None:
    """Refuse torchvision's mc3_18 (2D convolutions after stage 1), which ``r3d-18`` cannot hold."""
    if "stem.3.weight" in weights:
        raise ConversionError("the checkpoint has a factorised stem (stem.3), so it is an R(2+1)D network; convert "
                              "it with kind 'torchvision-r2plus1d'")
    block_convs = (k for k in weights if re.fullmatch(rf"{BLOCK}\.conv[12]\.0\.weight", k))
    flat = sorted(k for k in block_convs if weights[k].shape[2] == 1)
    if flat:
        raise ConversionError(f"the checkpoint's {flat[0]!r} has temporal kernel 1 (torchvision's mc3_18 layout, 3D "
                              f"convolutions in the first stage only), which slimkit's r3d-18 cannot hold; convert an "
                              f"r3d_18 or r2plus1d_18 checkpoint")


def _check_r2plus1d(weights: dict) -> None:
    if "stem.3.weight" not in weights:
        raise ConversionError("the checkpoint has no factorised stem (stem.3.weight), so it is not an R(2+1)D "
                              "network; a 3D ResNet converts with kind 'torchvision-r3d'")


def _architecture(weights: dict, kind: str) -> dict:
    """Builder options read from the weights: depth, width, input channels, classes."""
    stem_out = weights["stem.3.weight" if kind == "torchvision-r2plus1d" else "stem.0.weight"]
    return {"depth": _depth(weights, kind), "width": int(stem_out.shape[0]),
            "in_channels": int(weights["stem.0.weight"].shape[1]), "num_classes": int(weights["fc.weight"].shape[0])}


def _convert(checkpoint: Checkpoint, kind: str, builder: str, rules, extra: dict, prefix: str | None) -> Converted:
    import slimkit

    at = weights_prefix(checkpoint, "stem.0.weight", prefix, kind=f"torchvision {builder} checkpoint")
    weights = checkpoint.under(at)
    (_check_r2plus1d if kind == "torchvision-r2plus1d" else _check_r3d)(weights)
    options = {**_architecture(weights, kind), **extra}
    model = slimkit.build_model(builder, **options).eval()
    wm = WeightMap(checkpoint, model)
    for key in weights:
        target = slimkit_name(key, rules)
        if target is not None:
            wm.copy(at + key, target)
    zero_missing_counters(wm, model)
    declare_rest_unused(wm, at, "training state, not weights")
    notes = [f"torchvision {builder.replace('-', '_')} layout: depth {options['depth']}, width {options['width']}, "
             f"{options['num_classes']} classes; input (N, {options['in_channels']}, T, H, W) clips normalised as "
             f"torchvision's video models expect (mean [0.43216, 0.394666, 0.37645], std [0.22803, 0.22145, "
             f"0.216989], 112x112 crops)"]
    if at:
        notes.append(f"weights read from checkpoint entry {at.rstrip('.')!r}")
    return Converted(model=model, build={"builder": builder, "options": options}, weights=wm, notes=notes,
                     details={"weights_prefix": at, "builder": builder, "options": options})


def convert_r3d(checkpoint: Checkpoint, *, prefix: str | None = None) -> Converted:
    """torchvision ``r3d_18`` -> slimkit ``r3d-18`` (``prefix``: the entry holding the weights, found when left out).

    Apply ``slimkit.apply(model, "r2plus1d", layout="torchvision")`` afterwards for torchvision's R(2+1)D layout.
    """
    return _convert(checkpoint, "torchvision-r3d", "r3d-18", R3D_RULES, {}, prefix)


def convert_r2plus1d(checkpoint: Checkpoint, *, prefix: str | None = None) -> Converted:
    """torchvision ``r2plus1d_18`` -> slimkit ``r2plus1d-18`` with ``mid_width="per-block"`` (the same network)."""
    return _convert(checkpoint, "torchvision-r2plus1d", "r2plus1d-18", R2PLUS1D_RULES, {"mid_width": "per-block"},
                    prefix)


def build(spec: dict):
    """The bare slimkit model of a converted torchvision checkpoint (``slimkit.build_model``)."""
    import slimkit

    return slimkit.build_model(spec["builder"], **spec["options"])
