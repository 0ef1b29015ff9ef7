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

Refused before anything is changed (``ConfigError``): an explicit ``n_segment`` that differs
from the ``VideoClassifier`` the model is or contains (``n_segment=None`` takes the classifier's),
``place="block"`` with ``target_modules`` (``place`` only chooses among the built-in families'
layers), and a ``shift_div`` larger than the channel count of some shifted layer (no channel
would move there: plain TSN). After a refusal the model is left as it was.

Wrapping renames weights (``...layer.0.convolution.weight`` -> ``...layer.0.net.convolution.weight``):
load pretrained image weights first, then apply; ``slimkit.from_pretrained`` re-applies and loads.
"""
from __future__ import annotations

import re

from torch import nn

from slimkit.errors import ConfigError, UnsupportedModelError, one_of

from .config import DEFAULT_SEGMENTS, TSMConfig, check_segments, pooled_segments
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


# -- checks ---------------------------------------------------------------------------------------
def _classifier_segments(model: nn.Module) -> set[int]:
    """The ``n_segment`` of every ``VideoClassifier`` that is ``model`` or inside it."""
    from slimkit_video.classifier import VideoClassifier

    return {m.n_segment for m in model.modules() if isinstance(m, VideoClassifier)}


def resolve_segments(model: nn.Module, config: TSMConfig) -> TSMConfig:
    """``config`` with ``n_segment`` set: the classifier's when ``None``; refuse a disagreeing one."""
    segs = _classifier_segments(model)
    if len(segs) > 1:
        raise ConfigError(
            f"the model holds VideoClassifiers with different n_segment ({', '.join(map(str, sorted(segs)))}); "
            f"apply tsm to each classifier separately")
    wanted = next(iter(segs), None)
    if config.n_segment is None:
        n = wanted if wanted is not None else DEFAULT_SEGMENTS
        check_segments(n, config.temporal_pool, config.direction)
        return config.replace(n_segment=n)
    if wanted is not None and config.n_segment != wanted:
        raise ConfigError(
            f"tsm n_segment={config.n_segment} disagrees with the VideoClassifier's n_segment={wanted} "
            f"(frames per clip), so the shifts would mix frames of different clips; pass n_segment={wanted} "
            f"or leave n_segment out to take the classifier's")
    return config


def _check_place(config: TSMConfig) -> None:
    if config.target_modules is not None and config.place != "blockres":
        raise ConfigError(
            f"place={config.place!r} has no effect with target_modules (the input of each targeted module is "
            f"shifted); leave place out, or target the blocks themselves")


def input_channels(net: nn.Module) -> int | None:
    """Channels of the input of ``net``: those of its first conv / linear / norm layer (None if unknown)."""
    for m in net.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
        if isinstance(m, nn.Linear):
            return int(m.in_features)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return int(m.num_features)
        if isinstance(m, nn.GroupNorm):
            return int(m.num_channels)
    return None


def _check_channels(model: nn.Module, config: TSMConfig) -> None:
    """Refuse a ``shift_div`` for which some shifted layer would move no channel (``C // shift_div == 0``)."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, TemporalShift):
            c = input_channels(m.net)
            if c is not None:
                widths[name] = c
    if not widths:
        return
    name, narrowest = min(widths.items(), key=lambda kv: kv[1])
    if narrowest // config.shift_div == 0:
        idle = sum(c // config.shift_div == 0 for c in widths.values())
        raise ConfigError(
            f"shift_div={config.shift_div} moves no channel in {idle} of {len(widths)} shifted layers (the "
            f"narrowest, {name!r}, has {narrowest} input channels and {narrowest} // {config.shift_div} = 0), "
            f"which is plain TSN there; use shift_div <= {narrowest} (8 is the paper's value)")


def _remove_wrappers(model: nn.Module) -> None:
    """Undo an insertion: replace every ``TemporalShift`` / ``TemporalPool`` by the module it wraps."""
    while True:
        found = next(((n, m) for n, m in model.named_modules() if isinstance(m, (TemporalShift, TemporalPool))),
                     None)
        if found is None:
            return
        _set(model, found[0], found[1].net)


# -- apply ----------------------------------------------------------------------------------------
def apply_tsm(model: nn.Module, config: TSMConfig) -> nn.Module:
    """Insert ``TemporalShift`` (and ``TemporalPool``) modules in place; return ``model``.

    A refused setting (see the module docstring) raises ``ConfigError`` and leaves ``model`` unchanged.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"tsm needs a torch.nn.Module, got {type(model).__name__}")
    if any(isinstance(m, TemporalShift) for m in model.modules()):
        raise ConfigError("this model already has temporal shifts; apply tsm to the original model once")
    config = resolve_segments(model, config)
    _check_place(config)
    _insert(model, config)
    try:
        _check_channels(model, config)
    except ConfigError:
        _remove_wrappers(model)
        raise
    return model


def _insert(model: nn.Module, config: TSMConfig) -> None:
    """Wrap the layers chosen by ``config`` (built-in families or ``target_modules``)."""
    if config.target_modules is not None:
        _apply_targets(model, config)
        return
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
