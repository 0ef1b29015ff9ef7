"""``slimkit.apply(model, "tsm", ...)``: insert temporal shifts into a 2D CNN.

Supported out of the box (searched anywhere inside ``model``, so a ``VideoClassifier`` or any
wrapper works too):

- Hugging Face ``ResNetModel`` / ``ResNetForImageClassification`` / ``ResNetBackbone``: every
  residual block of every stage (every second block when the third stage has >= 23 blocks, as
  the paper does for ResNet-101). ``blockres`` wraps ``block.layer[0]`` (the branch's first conv
  layer); ``block`` wraps the block. ``temporal_pool`` pools before ``encoder.stages[1]``.
- Hugging Face ``MobileNetV2Model`` / ``MobileNetV2ForImageClassification``: inverted-residual
  blocks that have a residual connection. ``blockres`` wraps ``expand_1x1``; ``block`` wraps
  the block. ``temporal_pool`` pools before ``layer[2]`` (after the 56x56 stage).
- Anything else through ``target_modules`` (qualified names or a regex): each targeted module
  is wrapped, so its input is shifted.

Wrapping renames weights (``...layer.0.convolution.weight`` -> ``...layer.0.net.convolution.weight``):
load pretrained image weights first, then apply; ``slimkit.from_pretrained`` re-applies and loads.
"""
from __future__ import annotations

import re

from torch import nn

from slimkit.errors import ConfigError, UnsupportedModelError, one_of

from .config import TSMConfig, pooled_segments
from .modules import TemporalPool, TemporalShift

SUPPORTED = ("ResNetModel", "ResNetForImageClassification", "MobileNetV2Model",
             "MobileNetV2ForImageClassification")


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def _shift(net: nn.Module, n_segment: int, cfg: TSMConfig, inplace: bool = True) -> TemporalShift:
    # inplace: the HF ResNet/MobileNetV2 blocks and conv layers never modify their input, so
    # inference may shift inside the input and restore it (see TemporalShift); custom targets copy
    return TemporalShift(net, n_segment, cfg.shift_div, cfg.direction, inplace=inplace)


def _hf_classes():
    try:
        from transformers.models.mobilenet_v2.modeling_mobilenet_v2 import MobileNetV2Model
        from transformers.models.resnet.modeling_resnet import ResNetEncoder
    except ImportError:  # transformers missing: only target_modules works
        return None, None
    return ResNetEncoder, MobileNetV2Model


def _apply_resnet(encoder: nn.Module, cfg: TSMConfig) -> int:
    stages = encoder.stages
    n_round = 2 if len(stages) > 2 and len(stages[2].layers) >= 23 else 1
    count = 0
    for s, stage in enumerate(stages):
        seg = pooled_segments(cfg.n_segment) if (cfg.temporal_pool and s >= 1) else cfg.n_segment
        for i, block in enumerate(list(stage.layers)):
            if cfg.place == "block":
                stage.layers[i] = _shift(block, seg, cfg)
                count += 1
            elif i % n_round == 0:
                block.layer[0] = _shift(block.layer[0], seg, cfg)
                count += 1
    if cfg.temporal_pool and len(stages) > 1:
        stages[1] = TemporalPool(stages[1], cfg.n_segment)
    return count


def _apply_mobilenet_v2(model: nn.Module, cfg: TSMConfig) -> int:
    count = 0
    for i, block in enumerate(list(model.layer)):
        seg = pooled_segments(cfg.n_segment) if (cfg.temporal_pool and i >= 2) else cfg.n_segment
        if not getattr(block, "use_residual", False):
            continue
        if cfg.place == "block":
            model.layer[i] = _shift(block, seg, cfg)
        else:
            block.expand_1x1 = _shift(block.expand_1x1, seg, cfg)
        count += 1
    if cfg.temporal_pool and len(model.layer) > 2:
        model.layer[2] = TemporalPool(model.layer[2], cfg.n_segment)
    return count


def _apply_targets(model: nn.Module, cfg: TSMConfig) -> int:
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(cfg.target_modules, str):
        pattern = re.compile(cfg.target_modules)
        chosen = [n for n in names if pattern.fullmatch(n)]
        if not chosen:
            raise ConfigError(
                f"target_modules regex {cfg.target_modules!r} matches no module name (full match); "
                f"names look like {one_of(names[:6])}")
    else:
        known = set(names)
        missing = [n for n in cfg.target_modules if n not in known]
        if missing:
            raise ConfigError(
                f"target_modules names {missing[0]!r}, which is not a module of this model; "
                f"names look like {one_of(names[:6])} (see model.named_modules())")
        chosen = list(dict.fromkeys(cfg.target_modules))
    if cfg.temporal_pool:
        raise ConfigError(
            "temporal_pool is built in for HF ResNet and MobileNetV2 only; with target_modules "
            "set temporal_pool=False (or wrap a stage in slimkit_video.tsm.TemporalPool yourself)")
    # deepest first, so that wrapping a parent keeps the children's names valid
    for name in sorted(chosen, key=lambda n: n.count("."), reverse=True):
        _set(model, name, _shift(model.get_submodule(name), cfg.n_segment, cfg, inplace=False))
    return len(chosen)


def apply_tsm(model: nn.Module, config: TSMConfig) -> nn.Module:
    """Insert ``TemporalShift`` (and ``TemporalPool``) modules in place; return ``model``."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"tsm needs a torch.nn.Module, got {type(model).__name__}")
    if any(isinstance(m, TemporalShift) for m in model.modules()):
        raise ConfigError("this model already has temporal shifts; apply tsm to the original model once")
    if config.target_modules is not None:
        _apply_targets(model, config)
        return model
    ResNetEncoder, MobileNetV2Model = _hf_classes()
    count = 0
    if ResNetEncoder is not None:
        for m in [m for m in model.modules() if isinstance(m, ResNetEncoder)]:
            count += _apply_resnet(m, config)
        for m in [m for m in model.modules() if isinstance(m, MobileNetV2Model)]:
            count += _apply_mobilenet_v2(m, config)
    if count == 0:
        raise UnsupportedModelError(
            f"tsm found nothing to shift in {type(model).__name__}; it supports Hugging Face "
            f"{one_of(SUPPORTED)} out of the box, and any other model with "
            "target_modules=[qualified module names] or a regex")
    return model
