"""Checkpoints of the TSM repository (github.com/mit-han-lab/temporal-shift-module) -> ``VideoClassifier``.

What the repository saves (``main.py``): ``{"epoch", "arch", "state_dict", "optimizer", "best_prec1"}``;
``state_dict`` is the ``TSN`` model inside ``nn.DataParallel``, so every key starts ``module.``:

    module.base_model.<torchvision ResNet or MobileNetV2 key>     the frame backbone
    module.new_fc.weight / .bias                                  the head (dropout > 0, the default)
    module.base_model.fc.* / .classifier.*                        the head when trained with dropout 0

Wrappers add ``.net`` inside the backbone keys: a ``TemporalShift`` around the shifted layer
(``layer1.0.conv1.net.weight`` for ``blockres``, ``layer1.0.net.conv1.weight`` for ``block``,
``features.3.conv.0.net.weight`` in MobileNetV2) and a ``TemporalPool`` around ``layer2``
(``layer2.net.0...``). The file name carries the rest (``TSM_kinetics_RGB_resnet50_shift8_blockres_avg_
segment8_e50.pth``: ``shift8`` = shift_div, ``blockres`` = place, ``segment8`` = frames per clip,
``tpool``, ``_nl`` = non-local blocks, which slimkit does not have). The online demo's
``mobilenetv2_jester_online.pth.tar`` is a bare MobileNetV2 state dict (``features.*``, ``classifier.*``)
whose ten residual blocks shift ``C // 8`` channels from the previous frame only.

The target is ``VideoClassifier(<Hugging Face ResNetModel / MobileNetV2Model>, n_segment, num_classes)``
with ``slimkit.apply(..., "tsm", shift_div, place, direction, temporal_pool)``: the same network
(torchvision ResNet v1.5 = HF ResNet; MobileNetV2 with PyTorch padding and BatchNorm eps 1e-5). Where the
checkpoint's keys say where the shifts and the temporal pool are, that wins; the file name gives
shift_div, n_segment and (``online``) the direction; options override the file name, and an option
that contradicts the keys is refused. After conversion the shifted layers are checked against the
checkpoint's: every shifted convolution of the original is shifted in the result, and no other.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from slimkit.convert import Checkpoint, ConversionError, Converted, WeightMap
from slimkit.errors import ConfigError

from .keys import declare_rest_unused, stage_depths, zero_missing_counters

#: MobileNetV2 (``features`` index) blocks the online demo shifts: its residual blocks
ONLINE_DEMO_SHIFTED = frozenset({3, 5, 6, 8, 9, 10, 12, 13, 15, 16})
#: the TSM repository's input normalisation (RGB in [0, 1]; ``Flow``: mean 0.5, std mean(std))
RGB_MEAN, RGB_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
DEFAULT_SEGMENTS = 8


# -- reading the checkpoint's layout -------------------------------------------------------------
@dataclass
class Layout:
    """What the checkpoint's keys say.

    keys: plain torchvision-style backbone key (wrappers removed) -> checkpoint key; head: ``weight``/
    ``bias`` -> checkpoint key; shifted: plain module paths a ``TemporalShift`` wraps; pooled: stages a
    ``TemporalPool`` wraps; family: ``"resnet"`` or ``"mobilenet_v2"``; online_demo: the bare online file.
    """

    prefix: str
    model_prefix: str
    family: str
    keys: dict = field(default_factory=dict)
    head: dict = field(default_factory=dict)
    shifted: set = field(default_factory=set)
    pooled: set = field(default_factory=set)
    online_demo: bool = False


def _strip_wrappers(key: str) -> tuple[str, list[str], list[str]]:
    """``layer2.net.0.conv1.net.weight`` -> (``layer2.0.conv1.weight``, shifted ``[layer2.0.conv1]``,
    pooled ``[layer2]``): a ``.net`` right after a stage name is a TemporalPool, any other a TemporalShift."""
    plain: list[str] = []
    shifted, pooled = [], []
    for seg in key.split("."):
        if seg == "net" and plain:
            parent = ".".join(plain)
            (pooled if re.fullmatch(r"layer\d", parent) else shifted).append(parent)
            continue
        plain.append(seg)
    return ".".join(plain), shifted, pooled


def _backbone_prefix(checkpoint: Checkpoint) -> tuple[str, str]:
    """(prefix of the TSN model, prefix of its backbone): ``("module.", "module.base_model.")`` for a
    training checkpoint, ``("", "")`` for a bare backbone state dict (the online demo)."""
    hits = sorted({k[: k.index("base_model.")] for k in checkpoint.tensors if "base_model." in k}, key=len)
    if hits:
        return hits[0], hits[0] + "base_model."
    for anchor in ("features.0.0.weight", "conv1.weight"):
        ends = (k for k in checkpoint.tensors if k == anchor or k.endswith("." + anchor))
        found = sorted((k[: len(k) - len(anchor)] for k in ends), key=len)
        if found:
            return found[0], found[0]
    raise ConversionError(f"checkpoint {checkpoint.name!r} has no 'base_model.' weights nor a bare ResNet or "
                          f"MobileNetV2 state dict, so it is not a TSM repository checkpoint; check the kind "
                          f"(slimkit convert --list)")


def read_layout(checkpoint: Checkpoint) -> Layout:
    """Find the backbone, the head and the wrappers in a TSM repository checkpoint."""
    model_at, backbone_at = _backbone_prefix(checkpoint)
    keys, shifted, pooled = {}, set(), set()
    for key in checkpoint.tensors:
        if not key.startswith(backbone_at):
            continue
        plain, s, p = _strip_wrappers(key[len(backbone_at):])
        keys[plain] = key
        shifted.update(s)
        pooled.update(p)
    if any(".nl." in k or k.endswith(".nl") or ".block." in k for k in keys):
        raise ConversionError(f"checkpoint {checkpoint.name!r} has non-local blocks (keys with '.nl.'), which "
                              f"slimkit's VideoClassifier does not have; convert a checkpoint trained without "
                              f"--non_local")
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        family, classifier = "resnet", "fc"
    elif "features.0.0.weight" in keys and "features.1.conv.0.weight" in keys:
        family, classifier = "mobilenet_v2", "classifier"
    else:
        raise ConversionError(f"checkpoint {checkpoint.name!r} holds a backbone that is neither a torchvision "
                              f"ResNet nor the repository's MobileNetV2 (e.g. BNInception), which slimkit cannot "
                              f"build; convert a ResNet or MobileNetV2 checkpoint")
    head = {}
    for part in ("weight", "bias"):
        new_fc = f"{model_at}new_fc.{part}"
        if new_fc in checkpoint.tensors:
            head[part] = new_fc
        elif f"{classifier}.{part}" in keys:
            head[part] = keys.pop(f"{classifier}.{part}")
    if set(head) != {"weight", "bias"}:
        raise ConversionError(f"checkpoint {checkpoint.name!r} has no classifier ('new_fc' or the backbone's "
                              f"{classifier!r} weight and bias); convert a trained TSN/TSM checkpoint")
    online = backbone_at == model_at and family == "mobilenet_v2" and not shifted
    return Layout(prefix=backbone_at, model_prefix=model_at, family=family, keys=keys, head=head,
                  shifted=shifted, pooled=pooled, online_demo=online)


# -- options: keys > user options > file name > defaults ----------------------------------------------
def name_options(filename: str) -> dict:
    """What a TSM repository file name says: ``shift_div``, ``place``, ``n_segment``, ``temporal_pool``,
    ``direction`` (``online`` -> ``past``), ``modality`` and ``arch``."""
    out: dict = {}
    parts = filename.split("_")
    for i, part in enumerate(parts):
        m = re.fullmatch(r"shift(\d+)", part)
        if m:
            out["shift_div"] = int(m.group(1))
            if i + 1 < len(parts) and parts[i + 1] in ("blockres", "block"):
                out["place"] = parts[i + 1]
        m = re.fullmatch(r"segment(\d+)", part)
        if m:
            out["n_segment"] = int(m.group(1))
    if "tpool" in parts:
        out["temporal_pool"] = True
    if "online" in filename.lower():
        out["direction"] = "past"
    for modality in ("RGBDiff", "RGB", "Flow"):
        if modality in parts:
            out["modality"] = modality
            break
    if filename.startswith("TSM_") and len(parts) > 3:
        out["arch"] = parts[3]
    return out


def _place_from_keys(layout: Layout) -> str | None:
    """``blockres`` / ``block`` from where the shift wrappers sit (``None``: the keys do not say)."""
    if layout.online_demo:
        return "blockres"
    if not layout.shifted:
        return None
    if layout.family == "resnet":
        return "block" if all(re.fullmatch(r"layer\d\.\d+", s) for s in layout.shifted) else "blockres"
    return "blockres"


def resolve_options(layout: Layout, filename: str, given: dict) -> tuple[dict, list[str]]:
    """The TSM settings and a note on where each came from; a user option contradicting the keys is refused."""
    from_name = name_options(filename)
    if from_name.get("modality") == "RGBDiff":
        raise ConversionError(f"{filename!r} is an RGBDiff model, whose input is frame differences computed inside "
                              f"the repository's TSN; slimkit converts RGB and Flow models")
    shifts = bool(layout.shifted) or layout.online_demo
    place = _place_from_keys(layout)
    pool = bool(layout.pooled)
    notes = []
    if given.get("place") is not None and shifts and given["place"] != place:
        raise ConfigError(f"place={given['place']!r} contradicts the checkpoint, whose keys put the shifts at "
                          f"place {place!r} (e.g. {sorted(layout.shifted)[:1] or ['the residual blocks']}); leave "
                          f"place out")
    if given.get("temporal_pool") is not None and bool(given["temporal_pool"]) != pool:
        raise ConfigError(f"temporal_pool={given['temporal_pool']!r} contradicts the checkpoint, whose keys "
                          f"{'have' if pool else 'have no'} temporal pool around layer2; leave temporal_pool out")
    if not shifts:
        used = [k for k in ("shift_div", "place", "direction") if given.get(k) is not None]
        if used:
            raise ConfigError(f"{used[0]}={given[used[0]]!r} has no effect: the checkpoint has no temporal shifts "
                              f"(a TSN model); leave it out")

    def pick(name, default):
        if given.get(name) is not None:
            notes.append(f"{name}={given[name]!r} as given")
            return given[name]
        if name in from_name:
            notes.append(f"{name}={from_name[name]!r} from the file name")
            return from_name[name]
        notes.append(f"{name}={default!r} (default)")
        return default

    resolved = {"shift": shifts, "n_segment": pick("n_segment", DEFAULT_SEGMENTS), "temporal_pool": pool,
                "place": place, "modality": from_name.get("modality", "RGB")}
    if shifts:
        resolved["shift_div"] = pick("shift_div", 8)
        resolved["direction"] = pick("direction", "past" if layout.online_demo else "both")
        notes.append(f"place={place!r} and temporal_pool={pool} from the checkpoint's keys"
                     + (" (online demo: its ten residual blocks, C // 8 channels from the previous frame)"
                        if layout.online_demo else ""))
    if given.get("dropout") is not None:
        resolved["dropout"] = float(given["dropout"])
    else:
        resolved["dropout"] = 0.5 if "new_fc" in layout.head["weight"] else 0.0
    return resolved, notes


# -- the Hugging Face backbones --------------------------------------------------------------------
def resnet_config(keys: dict, tensors: dict) -> dict:
    """``ResNetConfig`` arguments reproducing the torchvision ResNet of ``keys`` (v1.5: stride in the 3x3)."""
    w = lambda k: tensors[keys[k]]  # noqa: E731 - a short local reader
    bottleneck = "layer1.0.conv3.weight" in keys
    depths = list(stage_depths(keys))
    last = "conv3" if bottleneck else "conv2"
    hidden = [int(w(f"layer{s}.0.{last}.weight").shape[0]) for s in range(1, 5)]
    if bottleneck:
        for s, h in enumerate(hidden, 1):
            inner = w(f"layer{s}.0.conv2.weight")
            if inner.shape[0] * 4 != h or inner.shape[1] != inner.shape[0]:
                raise ConversionError(f"layer{s}'s bottleneck is {tuple(inner.shape[:2])} inside {h} channels, not the "
                                      f"plain ResNet's 1/4 width without groups (ResNeXt or wide ResNet), which the "
                                      f"Hugging Face ResNet cannot hold")
    return {"num_channels": int(w("conv1.weight").shape[1]), "embedding_size": int(w("conv1.weight").shape[0]),
            "hidden_sizes": hidden, "depths": depths, "layer_type": "bottleneck" if bottleneck else "basic",
            "hidden_act": "relu", "downsample_in_first_stage": False, "downsample_in_bottleneck": False}


def mobilenet_v2_config(keys: dict, tensors: dict) -> dict:
    """``MobileNetV2Config`` arguments for the repository's MobileNetV2 (PyTorch padding, BatchNorm eps 1e-5)."""
    return {"num_channels": int(tensors[keys["features.0.0.weight"]].shape[1]), "depth_multiplier": 1.0,
            "tf_padding": False, "layer_norm_eps": 1e-5, "hidden_act": "relu6"}


def build_backbone(spec: dict):
    """The Hugging Face backbone of ``spec`` (``{"family": ..., "config": {...}}``), randomly initialised.

    MobileNetV2's BatchNorm momentum is set to PyTorch's 0.1, the repository's (the Hugging Face port
    uses 0.997, a TensorFlow-style value that would all but replace the running statistics each step).
    """
    import transformers
    from torch import nn

    if spec["family"] == "resnet":
        return transformers.ResNetModel(transformers.ResNetConfig(**spec["config"]))
    model = transformers.MobileNetV2Model(transformers.MobileNetV2Config(**spec["config"]))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return model


def resnet_target(key: str) -> str | None:
    """torchvision ResNet key -> Hugging Face ``ResNetModel`` key (``None`` when unknown)."""
    m = re.fullmatch(r"conv1\.weight", key)
    if m:
        return "embedder.embedder.convolution.weight"
    m = re.fullmatch(r"bn1\.(\w+)", key)
    if m:
        return f"embedder.embedder.normalization.{m.group(1)}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)", key)
    if m:
        stage, block, kind, k, leaf = m.groups()
        part = "convolution" if kind == "conv" else "normalization"
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.layer.{int(k) - 1}.{part}.{leaf}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)", key)
    if m:
        stage, block, idx, leaf = m.groups()
        part = "convolution" if idx == "0" else "normalization"
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.shortcut.{part}.{leaf}"
    return None


#: the repository's MobileNetV2 ``InvertedResidual.conv`` indices -> Hugging Face layer names
MBV2_STEM = {"0": "conv_3x3.convolution", "1": "conv_3x3.normalization",
             "3": "reduce_1x1.convolution", "4": "reduce_1x1.normalization"}
MBV2_BLOCK = {"0": "expand_1x1.convolution", "1": "expand_1x1.normalization",
              "3": "conv_3x3.convolution", "4": "conv_3x3.normalization",
              "6": "reduce_1x1.convolution", "7": "reduce_1x1.normalization"}


def mobilenet_v2_target(key: str, last: int) -> str | None:
    """Repository MobileNetV2 key -> Hugging Face ``MobileNetV2Model`` key (``last``: the final 1x1 conv's index)."""
    m = re.fullmatch(r"features\.(\d+)\.([01])\.(\w+)", key)
    if m:
        idx, sub, leaf = int(m.group(1)), m.group(2), m.group(3)
        part = "convolution" if sub == "0" else "normalization"
        if idx == 0:
            return f"conv_stem.first_conv.{part}.{leaf}"
        if idx == last:
            return f"conv_1x1.{part}.{leaf}"
        return None
    m = re.fullmatch(r"features\.(\d+)\.conv\.(\d)\.(\w+)", key)
    if m:
        idx, sub, leaf = int(m.group(1)), m.group(2), m.group(3)
        if idx == 1 and sub in MBV2_STEM:
            return f"conv_stem.{MBV2_STEM[sub]}.{leaf}"
        if 2 <= idx < last and sub in MBV2_BLOCK:
            return f"layer.{idx - 2}.{MBV2_BLOCK[sub]}.{leaf}"
    return None


# -- checking the shifts landed where the checkpoint had them ---------------------------------------
def _source_shifted(layout: Layout, plain_key: str) -> bool:
    """Whether the original shifts the input of the layer holding ``plain_key``."""
    if layout.online_demo:
        m = re.fullmatch(r"features\.(\d+)\.conv\.0\.weight", plain_key)
        return bool(m) and int(m.group(1)) in ONLINE_DEMO_SHIFTED
    module = plain_key.rsplit(".", 1)[0]
    return any(module == s or module.startswith(s + ".") for s in layout.shifted)


def _inside(model, name: str, cls) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), cls) for i in range(1, len(parts)))


def check_shifts(model, layout: Layout, conv_targets: dict) -> None:
    """Refuse a result whose shifted convolutions differ from the checkpoint's (``conv_targets``: plain
    source key of each conv weight -> its final name in ``model``)."""
    from ..tsm.modules import TemporalShift

    wrong = [(src, dst) for src, dst in conv_targets.items()
             if _source_shifted(layout, src) != _inside(model, dst, TemporalShift)]
    if wrong:
        src, dst = wrong[0]
        does = "shifts" if _source_shifted(layout, src) else "does not shift"
        raise ConversionError(f"{len(wrong)} convolution(s) are shifted differently from the checkpoint (e.g. "
                              f"{src!r}, which the original {does}, is {dst!r} here); this checkpoint's shift "
                              f"placement is not one slimkit's tsm builds, so it cannot be converted faithfully",
                              [s for s, _ in wrong])


# -- the converter ----------------------------------------------------------------------------------
def _map_backbone(wm: WeightMap, layout: Layout) -> dict:
    """Copy every backbone tensor; returns plain conv-weight key -> target name (for the shift check)."""
    if layout.family == "resnet":
        target_of = resnet_target
    else:
        last = max(int(k.split(".")[1]) for k in layout.keys if k.startswith("features."))
        target_of = lambda k: mobilenet_v2_target(k, last)  # noqa: E731
    convs = {}
    for plain, key in layout.keys.items():
        target = target_of(plain)
        if target is None:
            continue
        wm.copy(key, f"backbone.{target}")
        if wm.source(key).dim() == 4:
            convs[plain] = f"backbone.{target}"
    return convs


def convert(checkpoint: Checkpoint, *, n_segment: int | None = None, shift_div: int | None = None,
            place: str | None = None, direction: str | None = None, temporal_pool: bool | None = None,
            dropout: float | None = None) -> Converted:
    """A TSM repository checkpoint -> ``VideoClassifier`` with the ``tsm`` technique (see the module docstring).

    Options override what the file name says (``n_segment``, ``shift_div``, ``direction``: ``"past"`` for
    one-directional, online models); ``place`` and ``temporal_pool`` come from the keys and may only be
    confirmed; ``dropout`` is the classifier's training dropout (the repository's 0.5 by default).
    """
    import slimkit

    layout = read_layout(checkpoint)
    opts, notes = resolve_options(layout, checkpoint.name, dict(n_segment=n_segment, shift_div=shift_div, place=place,
                                                                direction=direction, temporal_pool=temporal_pool,
                                                                dropout=dropout))
    tensors = checkpoint.tensors
    config = (resnet_config if layout.family == "resnet" else mobilenet_v2_config)(layout.keys, tensors)
    backbone_spec = {"family": layout.family, "config": config}
    num_classes = int(tensors[layout.head["weight"]].shape[0])
    feature_dim = int(tensors[layout.head["weight"]].shape[1])
    build_spec = {"backbone": backbone_spec, "n_segment": opts["n_segment"], "num_classes": num_classes,
                  "feature_dim": feature_dim, "dropout": opts["dropout"]}
    model = build(build_spec)
    wm = WeightMap(checkpoint, model)
    convs = _map_backbone(wm, layout)
    wm.copy(layout.head["weight"], "head.weight")
    wm.copy(layout.head["bias"], "head.bias")
    if opts["shift"]:
        slimkit.apply(model, "tsm", n_segment=opts["n_segment"], shift_div=opts["shift_div"], place=opts["place"],
                      direction=opts["direction"], temporal_pool=opts["temporal_pool"])
        now = wm.renamed()
        convs = {src: now[dst] for src, dst in convs.items()}
    check_shifts(model, layout, convs)
    zero_missing_counters(wm, model)
    declare_rest_unused(wm, layout.model_prefix, "training state, not weights")
    model.eval()
    notes = [f"{'TSM' if opts['shift'] else 'TSN'} {layout.family} ({config.get('layer_type', '')}"
             f"{' depths ' + str(config['depths']) if layout.family == 'resnet' else ''}) from the TSM repository"
             f"{' (online demo)' if layout.online_demo else ''}", *notes,
             f"input: clips (N, {opts['n_segment']}, {config['num_channels']}, 224, 224), "
             + ("RGB in [0, 1] normalised with ImageNet mean/std" if opts["modality"] == "RGB" else
                "optical flow normalised with mean 0.5 and the mean ImageNet std")]
    if opts["shift"] and opts["direction"] == "past":
        notes.append("one-directional (past) shifts: slimkit_video.to_online(model) runs it frame by frame")
    details = {"options": {k: v for k, v in opts.items()}, "file_name_says": name_options(checkpoint.name),
               "input": {"mean": RGB_MEAN if opts["modality"] == "RGB" else [0.5],
                         "std": RGB_STD if opts["modality"] == "RGB" else [sum(RGB_STD) / 3],
                         "size": 224, "scale_size": 256, "layout": "(N, T, C, H, W)"}}
    return Converted(model=model, build=build_spec, weights=wm, notes=notes, details=details)


def build(spec: dict):
    """The bare ``VideoClassifier`` of a converted TSM checkpoint (the tsm config is re-applied on load)."""
    from ..classifier import VideoClassifier

    return VideoClassifier(build_backbone(spec["backbone"]), n_segment=spec["n_segment"],
                           num_classes=spec["num_classes"], feature_dim=spec.get("feature_dim"),
                           dropout=spec.get("dropout", 0.0))
