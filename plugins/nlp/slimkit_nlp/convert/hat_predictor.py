"""HAT's latency predictors (``latency_dataset/predictors/*.pt`` of mit-han-lab/hardware-aware-transformers)
-> slimkit ``LatencyPredictor`` with HAT's normalisation set.

HAT's predictor (``latency_predictor.py``, class ``Net``) is a bare state dict of an MLP:

    first_layer.weight [hidden, 10], .bias     layers.N.weight [hidden, hidden], .bias  (N < hidden-layer-num)
    predict.weight [1, hidden], .bias

on HAT's 10 architecture features divided by ``feature-norm`` (``[640, 6, 2048, 6, 640, 6, 2048, 6, 6, 2]``
in every shipped config), its output times ``lat-norm`` being the latency in ms. Those constants are not
in the file: they live in ``configs/<task>/latency_predictor/<hardware>.yml``. This converter knows the
values of HAT's eight shipped predictors by file name (lat-norm 5000 for the Raspberry Pi, 300 for the
Xeon, 200 for the TITAN Xp), reads them from that ``.yml`` (``config=``), or takes them as options. The
features are the same in slimkit (``SubConfig.features``: spans 1/2/3 are HAT's -1/1/2 mapped as HAT's
``get_config_features`` does), so ``predict(sub)`` gives HAT's milliseconds.
"""
from __future__ import annotations

import re
from pathlib import Path

from slimkit.convert import Checkpoint, ConversionError, Converted, WeightMap
from slimkit.errors import ConfigError

#: ``--feature-norm`` of every predictor config HAT ships (and ``latency_predictor.py``'s default)
HAT_FEATURE_NORM = [640.0, 6.0, 2048.0, 6.0, 640.0, 6.0, 2048.0, 6.0, 6.0, 2.0]
#: ``--lat-norm`` of HAT's shipped predictors (configs/<task>/latency_predictor/<hardware>.yml), by file stem
HAT_LAT_NORM = {"iwslt14deen_gpu_titanxp": 200.0, "wmt14ende_cpu_raspberrypi": 5000.0, "wmt14ende_cpu_xeon": 300.0,
                "wmt14ende_gpu_titanxp": 200.0, "wmt14enfr_cpu_raspberrypi": 5000.0, "wmt14enfr_cpu_xeon": 300.0,
                "wmt14enfr_gpu_titanxp": 200.0, "wmt19ende_gpu_titanxp": 200.0}
_BASE = dict(task="encdec", encoder_embed_choices=[640, 512], decoder_embed_choices=[640, 512],
             encoder_layer_choices=[6], decoder_layer_choices=[1, 2, 3, 4, 5, 6], ende_span_choices=[1, 2, 3],
             qkv_dim=512, activation="relu", pad_token_id=1, bos_token_id=0, eos_token_id=2)
#: HAT's design spaces: space0 (WMT, configs/wmt14.en-de/supertransformer/space0.yml), space1 (IWSLT)
HAT_SPACES = {
    "wmt": dict(_BASE, encoder_ffn_choices=[3072, 2048, 1024], decoder_ffn_choices=[3072, 2048, 1024],
                encoder_head_choices=[8, 4], decoder_head_choices=[8, 4], ende_head_choices=[8, 4], dropout=0.3),
    "iwslt": dict(_BASE, encoder_ffn_choices=[2048, 1024, 512], decoder_ffn_choices=[2048, 1024, 512],
                  encoder_head_choices=[4, 2], decoder_head_choices=[4, 2], ende_head_choices=[4, 2], dropout=0.375),
}


def find_prefix(checkpoint: Checkpoint) -> str:
    """Where the MLP's keys start (``""`` for HAT's bare state dict)."""
    hits = sorted((k[: -len("first_layer.weight")] for k in checkpoint.tensors if k.endswith("first_layer.weight")),
                  key=len)
    if not hits:
        raise ConversionError(f"checkpoint {checkpoint.name!r} has no 'first_layer.weight', so it is not one of HAT's "
                              f"latency predictors (latency_dataset/predictors/*.pt); check the kind")
    return hits[0]


def mlp_shape(checkpoint: Checkpoint, prefix: str) -> tuple[int, int, int]:
    """(features, hidden width, hidden layers after the first) read from the weights."""
    first = checkpoint.tensors[f"{prefix}first_layer.weight"]
    found = {int(m.group(1)) for k in checkpoint.tensors
             if (m := re.fullmatch(rf"{re.escape(prefix)}layers\.(\d+)\.weight", k))}
    if found != set(range(len(found))):
        raise ConversionError(f"checkpoint {checkpoint.name!r} has hidden layers {sorted(found)}, not 0..{len(found) - 1}; "
                              f"the file is damaged or edited, convert the original predictor")
    return int(first.shape[1]), int(first.shape[0]), len(found)


def read_predictor_yml(path) -> dict:
    """``feature_norm``, ``lat_norm`` (and the MLP sizes) from HAT's latency_predictor ``.yml``."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config={str(p)!r} does not exist; pass HAT's configs/<task>/latency_predictor/<hardware>.yml")
    data = {str(k).replace("-", "_"): v for k, v in (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).items()}
    if "lat_norm" not in data:
        raise ConfigError(f"{str(p)!r} has no 'lat-norm', so it is not one of HAT's latency predictor configs; pass "
                          f"configs/<task>/latency_predictor/<hardware>.yml")
    return data


def resolve_norms(name: str, config, feature_norm, lat_norm) -> tuple[list[float], float, str]:
    """(feature_norm, lat_norm, where they came from): options > the .yml > HAT's shipped values by file name."""
    stem = Path(name).stem
    yml = read_predictor_yml(config) if config is not None else {}
    if lat_norm is not None:
        lat, where = float(lat_norm), "lat_norm as given"
    elif yml:
        lat, where = float(yml["lat_norm"]), f"lat-norm from {Path(config).name}"
    elif stem in HAT_LAT_NORM:
        lat, where = HAT_LAT_NORM[stem], f"lat-norm of HAT's shipped config for {stem!r}"
    else:
        raise ConfigError(f"{name!r} is not one of HAT's shipped predictors ({', '.join(sorted(HAT_LAT_NORM))}), so its "
                          f"latency normalisation is unknown; pass config=<its latency_predictor .yml> or lat_norm=")
    norm = feature_norm if feature_norm is not None else yml.get("feature_norm", HAT_FEATURE_NORM)
    return [float(v) for v in norm], lat, where


def resolve_space(name: str, space) -> tuple:
    """(design space, label): a ``HatSpace``, its dict or file, ``"wmt"`` / ``"iwslt"``, or from the file name."""
    from slimkit_nlp.hat.space import HatSpace

    if isinstance(space, HatSpace):
        return space, "as given"
    if isinstance(space, dict):
        return HatSpace.from_dict(space), "as given"
    if space is None:
        space = "iwslt" if Path(name).stem.startswith("iwslt") else "wmt"
    if space in HAT_SPACES:
        return HatSpace(**HAT_SPACES[space]), f"HAT's {'IWSLT space1' if space == 'iwslt' else 'WMT space0'}"
    if Path(str(space)).is_file():
        return HatSpace.load(space), f"from {Path(str(space)).name}"
    raise ConfigError(f"space={space!r} is neither 'wmt', 'iwslt', a space dict nor a space file; pass one of those")


def convert(checkpoint: Checkpoint, *, config=None, feature_norm=None, lat_norm=None, space=None) -> Converted:
    """HAT's latency predictor -> slimkit ``LatencyPredictor`` with HAT's normalisation (module docstring).

    ``config``: HAT's ``latency_predictor/<hardware>.yml`` (gives feature-norm and lat-norm); ``feature_norm``
    (10 numbers), ``lat_norm`` (ms): override; ``space``: ``"wmt"`` (space0) / ``"iwslt"`` (space1) / dict /
    file, by default from the file name.
    """
    prefix = find_prefix(checkpoint)
    n_features, hidden, extra = mlp_shape(checkpoint, prefix)
    norm, lat, where = resolve_norms(checkpoint.name, config, feature_norm, lat_norm)
    hat_space, space_from = resolve_space(checkpoint.name, space)
    if len(norm) != n_features or n_features != len(hat_space.largest().features()):
        raise ConversionError(f"the predictor takes {n_features} features, its feature-norm has {len(norm)} and the "
                              f"{hat_space.task} space gives {len(hat_space.largest().features())}; HAT's predictors "
                              f"take 10 (encoder-decoder), pass matching feature_norm and space")
    spec = {"space": hat_space.to_dict(), "hidden": hidden, "layers": extra + 1, "scale": norm, "y_mean": lat}
    model = build(spec)
    wm = WeightMap(checkpoint, model)
    sources = ["first_layer", *(f"layers.{i}" for i in range(extra)), "predict"]
    for i, src in enumerate(sources):
        for leaf in ("weight", "bias"):
            wm.copy(f"{prefix}{src}.{leaf}", f"net.{2 * i}.{leaf}")
    wm.initialised("feature_scale", f"HAT's feature-norm {norm} (features are divided by it)")
    wm.initialised("latency_scale", f"{where}: {lat:g} ms per output unit")
    wm.unused_all([k for k in checkpoint.tensors if not k.startswith(prefix)], "not part of the predictor's MLP")
    notes = [f"HAT latency predictor: {n_features} -> {hidden} x {extra + 1} -> 1, ReLU; {where} ({lat:g}); "
             f"feature-norm {norm}; predict(sub) returns milliseconds",
             f"space {space_from}: FFN choices {hat_space.encoder_ffn_choices}, heads {hat_space.encoder_head_choices}"]
    return Converted(model=model, build=spec, weights=wm, notes=notes,
                     details={"feature_norm": norm, "lat_norm": lat, "norm_from": where})


def build(spec: dict):
    """The slimkit ``LatencyPredictor`` of a converted predictor (weights loaded afterwards by from_pretrained)."""
    from slimkit_nlp.hat.predictor import LatencyPredictor
    from slimkit_nlp.hat.space import HatSpace

    return LatencyPredictor(HatSpace.from_dict(spec["space"]), spec["hidden"], spec["layers"], scale=spec["scale"],
                            y_mean=spec["y_mean"]).eval()
