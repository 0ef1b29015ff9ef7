"""Helpers shared by the video converters: finding the weights inside a checkpoint, bookkeeping."""
from __future__ import annotations

from typing import Iterable, Sequence

from slimkit.convert import Checkpoint, ConversionError, WeightMap

#: where training scripts keep the weights: a bare state dict, or under one of these entries
WEIGHT_PREFIXES = ("", "model.", "state_dict.", "module.", "state_dict.module.", "model.module.", "net.")


def weights_prefix(checkpoint: Checkpoint, anchor: str, given: str | None = None, kind: str = "") -> str:
    """The dotted prefix under which ``checkpoint`` keeps the weights (``""`` for a bare state dict).

    ``anchor`` is a key every checkpoint of the kind has (e.g. ``"stem.0.weight"``); ``given`` is the
    user's choice (e.g. ``"model_ema.module."`` for EMA weights), checked.
    """
    if given is not None:
        prefix = given if given == "" or given.endswith(".") else given + "."
        if prefix + anchor not in checkpoint.tensors:
            raise ConversionError(f"checkpoint {checkpoint.name!r} has no {prefix + anchor!r}, so prefix={given!r} "
                                  f"does not hold {kind or 'these'} weights; leave prefix out to find them")
        return prefix
    found = [k[: len(k) - len(anchor)] for k in checkpoint.tensors if k == anchor or k.endswith("." + anchor)]
    if not found:
        raise ConversionError(f"checkpoint {checkpoint.name!r} has no {anchor!r} under any entry, so it is not a "
                              f"{kind or 'checkpoint of this kind'}; check the kind (slimkit convert --list)")
    ranked = sorted(found, key=lambda p: (WEIGHT_PREFIXES.index(p) if p in WEIGHT_PREFIXES else len(WEIGHT_PREFIXES),
                                         len(p)))
    return ranked[0]


def declare_rest_unused(wm: WeightMap, prefix: str, why_outside: str = "not part of the model's weights") -> None:
    """Every checkpoint tensor outside ``prefix`` is unused, with the entry it sits in named."""
    for key in wm.checkpoint.tensors:
        if not key.startswith(prefix):
            entry = key.split(".", 1)[0]
            wm.unused(key, f"{why_outside} (checkpoint entry {entry!r})")


def zero_missing_counters(wm: WeightMap, model) -> None:
    """BatchNorm batch counters the checkpoint lacks (older PyTorch saved none): 0, recorded."""
    written = wm.targets_set()
    for name in model.state_dict():
        if name.endswith("num_batches_tracked") and name not in written:
            wm.initialised(name, "BatchNorm batch counter, not a weight: 0 (older checkpoints have none)")


def stage_depths(plain_keys: Iterable[str], stages: Sequence[str] = ("layer1", "layer2", "layer3", "layer4")
                 ) -> tuple[int, ...]:
    """Blocks per stage from keys like ``layer2.1.conv1.weight``: ``(2, 2, 2, 2)`` for an 18-layer ResNet."""
    counts = {s: set() for s in stages}
    for k in plain_keys:
        head, _, rest = k.partition(".")
        if head in counts:
            idx = rest.split(".", 1)[0]
            if idx.isdigit():
                counts[head].add(int(idx))
    return tuple(max(v) + 1 if v else 0 for v in counts.values())
