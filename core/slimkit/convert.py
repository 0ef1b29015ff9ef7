"""Bring your weights: turn a checkpoint of another code base into a slimkit save folder.

    report = slimkit.convert("tsm-repo", "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth", "tsm-r50")
    model = slimkit.convert.load_converted("tsm-r50")      # or from_pretrained(<the bare model>, "tsm-r50")

    slimkit convert tsm-repo TSM_..._e50.pth tsm-r50 [-o shift_div=8] [--allow-new PATTERN] [--allow-unused]

A *converter* (registered by a plugin through the ``register_converters`` hook, see ``hookspecs``) reads
one kind of checkpoint, builds the matching slimkit model and records, in a :class:`WeightMap`, where each
of the model's tensors came from. This module then settles the books before anything is written:

* every tensor of the target model must be *mapped* (copied from, or computed from, checkpoint tensors)
  or *initialised* by the converter with a stated rule (e.g. an identity BatchNorm). A tensor left at
  its random initialisation is refused, with the list, unless ``allow_new`` (True, or fnmatch patterns
  of target names) asks for it;
* every tensor in the checkpoint must be *mapped* or declared *unused* by the converter with a reason
  (optimizer state, a replaced head, ...). Any other tensor means the converted model would not be the
  one that was trained: refused, with the list, unless ``allow_unused=True``.

The output folder (written atomically, ``slimkit.io.atomic_folder``) holds the weights and technique
stack of ``slimkit.save_pretrained`` (so ``slimkit.from_pretrained(bare_model, folder)`` loads it),
``slimkit_model.json`` (how to build the bare model again: :func:`load_converted` does it) and
``conversion_report.json``: every tensor mapped (source -> target), every tensor left unused (with the
reason) and every tensor newly initialised (with the rule). A summary is printed to stderr.

Checkpoints are read safely, once: safetensors, or PyTorch files with ``weights_only=True``. A file that
needs arbitrary code to load (a pickled class) is refused with the class it names; nothing here runs it.
A converter gets the tensors flattened (``Checkpoint.tensors``), the top-level scalars
(``Checkpoint.fields``) and every top-level non-tensor entry as plain data (``Checkpoint.objects``, e.g.
fairseq's ``args`` Namespace as a dict), so it never needs to read the file again.
The module imports torch only when a conversion runs.
"""
from __future__ import annotations

import fnmatch
import inspect
import json
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import click

from .errors import ConfigError, SlimkitError, one_of

MODEL_FILE = "slimkit_model.json"
REPORT_FILE = "conversion_report.json"
#: at most this many names are spelt out in one refusal (the report and the exception keep them all)
LISTED = 20


class ConversionError(SlimkitError, ValueError):
    """A checkpoint cannot be converted as asked (unreadable, unsafe, incomplete or of another kind).

    ``names`` holds the full list of tensors the message is about, when it is about tensors.
    """

    def __init__(self, message: str, names: Sequence[str] = ()):
        super().__init__(message)
        self.names = list(names)


# -- registration --------------------------------------------------------------------------------
@dataclass
class Converter:
    """One source kind ``slimkit convert`` knows.

    ``run(checkpoint: Checkpoint, **options) -> Converted`` builds the target model and records where
    its tensors came from; its keyword arguments are the kind's options (``options`` lists them when
    ``run`` is a lazy stand-in whose signature does not show them). ``build(spec: dict) -> model``
    rebuilds the bare target model (before techniques) from ``Converted.build``, for :func:`load_converted`.
    ``allow_classes``: classes the kind's PyTorch pickles may hold besides tensors and containers (passed
    to ``torch.serialization.safe_globals``; e.g. ``argparse.Namespace``), never anything that runs code.
    """

    kind: str
    run: Callable[..., "Converted"]
    build: Callable[[dict], Any]
    summary: str = ""
    options: Sequence[str] | None = None
    allow_classes: tuple = ()
    plugin: str = ""

    def option_names(self) -> list[str] | None:
        """The options the kind takes (``None``: any keyword)."""
        if self.options is not None:
            return list(self.options)
        params = list(inspect.signature(self.run).parameters.values())[1:]
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _converter_item(*args: Any, **kwargs: Any) -> Converter:
    if len(args) == 1 and not kwargs and isinstance(args[0], Converter):
        return args[0]
    return Converter(*args, **kwargs)


def converters() -> dict[str, Converter]:
    """Registered converters by source kind (from every loaded plugin)."""
    from .host import HOST

    return HOST.collect("register_converters", key=lambda c: c.kind, make=_converter_item)


def get_converter(kind: str) -> Converter:
    """The converter of ``kind``; a clear error naming the known kinds when there is none."""
    table = converters()
    if kind in table:
        return table[kind]
    if not table:
        from .registry import install_command

        raise ConfigError(f"no checkpoint converters are installed, so {kind!r} cannot be converted; install the "
                          f"plugins that provide them: {install_command('all')}")
    raise ConfigError(f"unknown checkpoint kind {kind!r}; known kinds are {one_of(table)} (slimkit convert --list)")


def check_options(converter: Converter, options: dict) -> None:
    """Refuse options the converter does not take (a typo would silently do nothing)."""
    names = converter.option_names()
    if names is None:
        return
    unknown = [k for k in options if k not in names]
    if unknown:
        valid = one_of(names) if names else "none"
        raise ConfigError(f"unknown option {unknown[0]!r} for checkpoint kind {converter.kind!r}; its options are "
                          f"{valid}")


# -- reading checkpoints -------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint file, read once: every tensor under its dotted path, the top-level entries as data.

    tensors: ``{"state_dict.module.conv1.weight": tensor, "optimizer.state.0.momentum_buffer": tensor,
    ...}`` (a bare state dict has its own keys); fields: top-level ``str``/``int``/``float``/``bool``
    entries such as ``{"epoch": 50, "arch": "resnet50"}`` (safetensors: its metadata; listed in the
    report); objects: every top-level entry that is not a tensor, as plain data: dicts, lists, tuples and
    scalars as loaded, an allowed class's instance (``argparse.Namespace``, see ``Converter.allow_classes``)
    as the dict of its attributes, tensors inside kept as the same tensor objects as in ``tensors``. E.g. a
    fairseq file gives ``objects["args"] == {"arch": "transformer_wmt_en_de", "lr": [0.001], ...}``. Empty
    for safetensors and for a file whose top level is not a dict.
    """

    path: Path
    tensors: dict
    fields: dict = field(default_factory=dict)
    objects: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def under(self, prefix: str) -> dict:
        """The tensors whose dotted path starts with ``prefix`` (given with its trailing dot), by the rest."""
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte header length and a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n <= path.stat().st_size - 8 and head[8:9] == b"{"


def _flatten(obj: Any, prefix: str, tensors: dict, fields: dict, depth: int = 0) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", tensors, fields, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}{i}.", tensors, fields, depth + 1)
    elif depth == 1 and isinstance(obj, (str, int, float, bool)):
        fields[prefix.rstrip(".")] = obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):   # an allowed class (argparse.Namespace)
        _flatten(vars(obj), prefix, tensors, {}, depth + 1)


def _as_data(obj: Any) -> Any:
    """``obj`` as plain data: an instance of an allowed class (``argparse.Namespace``, a stand-in for
    fairseq's meters) becomes the dict of its attributes, recursively through dicts, lists and tuples;
    tensors and scalars stay as they are."""
    import torch

    if isinstance(obj, (torch.Tensor, str, bytes, int, float, bool, type(None))):
        return obj
    if isinstance(obj, dict):
        return {k: _as_data(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_as_data(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_as_data(v) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return {k: _as_data(v) for k, v in vars(obj).items()}
    return obj


def _objects(obj: Any) -> dict:
    """The top-level entries of a loaded file that are not tensors, as plain data (:func:`_as_data`)."""
    import torch

    if not isinstance(obj, dict):
        return {}
    return {str(k): _as_data(v) for k, v in obj.items() if not isinstance(v, torch.Tensor)}


def _unsafe_class(message: str) -> str:
    """The class a refused pickle names (``argparse.Namespace``), from torch's error message."""
    found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"Unsupported global: ([\w.]+)", message)
    return found.group(1) if found else "a Python object other than tensors and containers"


def read_checkpoint(path: str | os.PathLike, allow_classes: Iterable = ()) -> Checkpoint:
    """Read a safetensors file or a PyTorch file (``weights_only=True``, one ``torch.load``) into a
    :class:`Checkpoint`.

    A PyTorch file holding a pickled class outside ``allow_classes`` is refused naming the class: loading
    it would mean running whatever code the file asks for.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise ConversionError(f"checkpoint {str(p)!r} does not exist; pass the path of the checkpoint file to convert")
    tensors: dict = {}
    fields: dict = {}
    if _is_safetensors(p):
        from .io import load_safetensors

        tensors = load_safetensors(p, fix="download or export it again")
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            fields = dict(f.metadata() or {})
        return Checkpoint(p, tensors, fields)
    try:
        with torch.serialization.safe_globals(list(allow_classes)):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one sentence naming the file
        text = str(e)
        if type(e).__name__ == "UnpicklingError" or "weights_only" in text:
            raise ConversionError(
                f"checkpoint {str(p)!r} needs arbitrary code to load (it pickles {_unsafe_class(text)}), which "
                f"slimkit never runs; if you trust the file, load it yourself with weights_only=False in a "
                f"separate Python and save just its tensors (torch.save of the state dict, or safetensors), "
                f"then convert that file") from None
        raise ConversionError(f"checkpoint {str(p)!r} cannot be read as a PyTorch or safetensors file "
                              f"({type(e).__name__}: {text.splitlines()[0] if text else ''}); download or "
                              f"export it again") from None
    _flatten(obj, "", tensors, fields)
    if not tensors:
        raise ConversionError(f"checkpoint {str(p)!r} holds no tensors; pass the file that holds the weights")
    return Checkpoint(p, tensors, fields, _objects(obj))


# -- recording where each tensor comes from -----------------------------------------------------
@dataclass
class _Write:
    target: str
    sources: list
    how: str


class WeightMap:
    """Where every tensor of the target model comes from; filled in by a converter.

    Targets are named as in ``model.state_dict()`` at the time of the call; they are tracked by tensor
    identity, so a technique applied afterwards that wraps modules (TSM's ``.net.``) renames them in
    the report automatically. A target whose tensor the final model no longer holds (a replaced layer)
    drops out, so a converter that replaces layers records the replacements with :meth:`derived`.
    """

    def __init__(self, checkpoint: Checkpoint, model: Any):
        self.checkpoint = checkpoint
        self.model = model
        self._writes: dict[int, _Write] = {}
        self._inits: dict[int, tuple[str, str, bool]] = {}   # id -> (target, how, random)
        self._keep: dict[int, Any] = {}                       # the tensors, so ids stay unique
        self._unused: dict[str, str] = {}

    def _target(self, name: str):
        """The model's tensor called ``name`` now (looked up through the module tree, so never stale)."""
        import torch

        owner, _, attr = name.rpartition(".")
        try:
            t = getattr(self.model.get_submodule(owner), attr)
        except AttributeError:
            t = None
        if not isinstance(t, torch.Tensor):   # a tensor only the state dict names (custom state dict hooks)
            t = self.model.state_dict(keep_vars=True).get(name)
        if t is None:
            raise ConversionError(f"the converter names {name!r}, which the target model "
                                  f"{type(self.model).__name__} does not have; this is a converter bug, "
                                  f"report it with the checkpoint kind")
        self._keep[id(t)] = t
        return t

    def source(self, key: str):
        """The checkpoint tensor at dotted path ``key``; a clear error when the file lacks it."""
        if key not in self.checkpoint.tensors:
            raise ConversionError(f"checkpoint {self.checkpoint.name!r} lacks {key!r}, which this kind of "
                                  f"checkpoint always has; check the kind, or that the file is complete", [key])
        return self.checkpoint.tensors[key]

    def copy(self, source: str, target: str, transform: Callable | None = None) -> None:
        """Copy checkpoint tensor ``source`` (through ``transform``, if given) into ``target``."""
        import torch

        value = self.source(source)
        if transform is not None:
            value = transform(value)
        t = self._target(target)
        if tuple(value.shape) != tuple(t.shape):
            raise ConversionError(
                f"checkpoint tensor {source!r} has shape {tuple(value.shape)} but the model's {target!r} has "
                f"{tuple(t.shape)}, so the checkpoint is of another architecture or size; check the kind and "
                f"the options (depth, width, classes)", [source])
        with torch.no_grad():
            t.copy_(value.to(dtype=t.dtype))
        self._writes[id(t)] = _Write(target, [source], "copied" if transform is None else "copied (transformed)")

    def derived(self, sources: Sequence[str], targets: Sequence[str], how: str) -> None:
        """Record that the converter computed ``targets`` from checkpoint tensors ``sources`` (``how``)."""
        for key in sources:
            self.source(key)
        for name in targets:
            t = self._target(name)
            self._writes[id(t)] = _Write(name, list(sources), how)

    def initialised(self, target: str, how: str, random: bool = False) -> None:
        """Record that ``target`` has no source in the checkpoint and was set by the rule ``how``.

        ``random=True``: left at (or drawn from) a random initialisation, which needs ``allow_new``.
        """
        t = self._target(target)
        self._inits[id(t)] = (target, how, random)

    def unused(self, source: str, why: str) -> None:
        """Declare checkpoint tensor ``source`` not used, and why (it is listed in the report)."""
        self.source(source)
        self._unused[source] = why

    def unused_all(self, sources: Iterable[str], why: str) -> None:
        """:meth:`unused` for several tensors with one reason."""
        for key in sources:
            self.unused(key, why)

    def renamed(self) -> dict:
        """``{name when written: name now}`` for every tensor written (techniques may have renamed them)."""
        names = {id(t): n for n, t in self.model.state_dict(keep_vars=True).items()}
        return {w.target: names[tid] for tid, w in self._writes.items() if tid in names}

    def targets_set(self) -> set:
        """Names (as the model has them now) of the tensors already copied, derived or initialised."""
        names = {id(t): n for n, t in self.model.state_dict(keep_vars=True).items()}
        return {names[i] for i in (*self._writes, *self._inits) if i in names}

    def settle(self, model: Any) -> dict:
        """The books for the final ``model``: ``mapped`` (source -> targets), ``initialised`` and ``random``
        (target -> rule), ``missing`` (targets nobody set), ``unused`` (source -> why), ``leftover``
        (sources neither used nor declared unused)."""
        names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
        mapped: dict[str, list[str]] = {}
        covered = set()
        for tid, w in self._writes.items():
            if tid in names:
                covered.add(tid)
                for s in w.sources:
                    mapped.setdefault(s, []).append(names[tid])
        initialised: dict[str, str] = {}
        random: dict[str, str] = {}
        for tid, (_, how, is_random) in self._inits.items():
            if tid in names and tid not in covered:
                covered.add(tid)
                (random if is_random else initialised)[names[tid]] = how
        missing = [n for tid, n in names.items() if tid not in covered]
        used = set(mapped)
        unused = {k: why for k, why in self._unused.items() if k not in used}
        leftover = [k for k in self.checkpoint.tensors if k not in used and k not in unused]
        transformed = {names[tid]: w.how for tid, w in self._writes.items() if tid in names and w.how != "copied"}
        return {"mapped": {k: sorted(v) for k, v in mapped.items()}, "initialised": initialised, "random": random,
                "missing": missing, "unused": unused, "leftover": leftover, "transformed": transformed}


@dataclass
class Converted:
    """What a converter's ``run`` returns.

    model: the target model, weights set, techniques applied (``slimkit.apply``, so the save records them);
    build: JSON spec from which ``Converter.build`` rebuilds the bare model (before techniques);
    weights: the :class:`WeightMap` filled in while setting them; notes: sentences for the report
    (options read from the file name, preprocessing the model expects, ...); details: JSON extras.
    """

    model: Any
    build: dict
    weights: WeightMap
    notes: list = field(default_factory=list)
    details: dict = field(default_factory=dict)


# -- the report ----------------------------------------------------------------------------------
@dataclass
class ConversionReport:
    """Every tensor mapped (source -> targets), left unused (source -> why) and newly initialised
    (target -> rule); ``transformed``: the targets that are not plain copies (target -> how); with the
    checkpoint's scalar fields and the converter's notes."""

    kind: str
    checkpoint: str
    output_dir: str
    mapped: dict
    unused: dict
    initialised: dict
    transformed: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    target_tensors: int = 0
    source_tensors: int = 0
    target_params: int = 0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "checkpoint": self.checkpoint, "output_dir": self.output_dir,
                "source_tensors": self.source_tensors, "target_tensors": self.target_tensors,
                "target_params": self.target_params, "fields": self.fields, "notes": list(self.notes),
                "mapped": self.mapped, "unused": self.unused, "initialised": self.initialised,
                "transformed": self.transformed, "details": self.details}

    @property
    def mapped_targets(self) -> int:
        """How many distinct model tensors were mapped (a target set from two checkpoint keys, such as one
        embedding shared by encoder and decoder, counts once)."""
        return len({t for targets in self.mapped.values() for t in targets})

    def summary(self) -> str:
        """A few lines: counts, unused tensors by reason, initialised tensors by rule, notes."""
        lines = [f"converted {self.kind} checkpoint {self.checkpoint!r} -> {self.output_dir!r}: "
                 f"{len(self.mapped)} of {self.source_tensors} checkpoint tensors mapped onto "
                 f"{self.mapped_targets} of {self.target_tensors} model tensors ({self.target_params:,} parameters); "
                 f"{len(self.unused)} unused, {len(self.initialised)} newly initialised"]
        for why, keys in _group(self.unused).items():
            lines.append(f"  unused ({len(keys)}): {why}: {_names(keys)}")
        for how, keys in _group(self.initialised).items():
            lines.append(f"  initialised ({len(keys)}): {how}: {_names(keys)}")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  full lists in {os.path.join(self.output_dir, REPORT_FILE)}")
        return "\n".join(lines)

    __str__ = summary


def _group(d: dict) -> dict:
    out: dict[str, list] = {}
    for k, v in d.items():
        out.setdefault(v, []).append(k)
    return out


def _names(keys: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _listed(keys: Sequence[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:LISTED])
    return shown + (f" and {len(keys) - LISTED} more" if len(keys) > LISTED else "")


def _allowed(name: str, allow_new: bool | Sequence[str]) -> bool:
    if allow_new is True:
        return True
    if not allow_new:
        return False
    return any(fnmatch.fnmatchcase(name, p) for p in allow_new)


def settle_books(kind: str, checkpoint: Checkpoint, result: Converted, output_dir: str,
                 allow_new: bool | Sequence[str] = False, allow_unused: bool = False) -> ConversionReport:
    """Check that nothing is silently dropped or left random (see the module docstring); the report."""
    books = result.weights.settle(result.model)
    randoms = dict(books["random"])
    randoms.update({n: "left at the model's random initialisation (no tensor in the checkpoint)"
                    for n in books["missing"]})
    refused = [n for n in randoms if not _allowed(n, allow_new)]
    if refused:
        raise ConversionError(
            f"the {kind} conversion would leave {len(refused)} tensor(s) of the model at a random initialisation "
            f"({_listed(refused)}); pass allow_new=True or name them with fnmatch patterns (CLI: --allow-new "
            f"PATTERN) if that is what you want, e.g. a new head for other classes", refused)
    unused = dict(books["unused"])
    if books["leftover"]:
        if not allow_unused:
            raise ConversionError(
                f"checkpoint {checkpoint.name!r} has {len(books['leftover'])} tensor(s) the {kind} conversion does "
                f"not use ({_listed(books['leftover'])}), so the converted model would not be the one that was "
                f"trained; check the kind and its options, or pass allow_unused=True (CLI: --allow-unused) to "
                f"drop them", books["leftover"])
        unused.update({k: "not used by the target model (dropped: allow_unused)" for k in books["leftover"]})
    initialised = dict(books["initialised"])
    initialised.update({n: f"{why} (allowed: allow_new)" for n, why in randoms.items()})
    import torch

    n_params = sum(p.numel() for p in result.model.parameters()) if isinstance(result.model, torch.nn.Module) else 0
    return ConversionReport(kind=kind, checkpoint=str(checkpoint.path), output_dir=str(output_dir),
                            mapped=books["mapped"], unused=unused, initialised=initialised,
                            transformed=books["transformed"], fields=dict(checkpoint.fields),
                            notes=list(result.notes), details=dict(result.details),
                            target_tensors=len(result.model.state_dict()), source_tensors=len(checkpoint.tensors),
                            target_params=n_params)


def _json_ready(obj: Any) -> Any:
    """``obj`` with everything JSON cannot hold turned into text (fields may hold anything scalar)."""
    return json.loads(json.dumps(obj, default=str))


def write_conversion(result: Converted, report: ConversionReport, output_dir: str | os.PathLike) -> Path:
    """Write the save folder atomically: weights + technique stack, the model spec and the report."""
    from ._version import __version__
    from .api import SAVE_FILES, _refuse_foreign_folder, write_pretrained
    from .io import atomic_folder, atomic_write_json

    d = Path(output_dir)
    _refuse_foreign_folder(d, SAVE_FILES | {MODEL_FILE, REPORT_FILE})
    with atomic_folder(d) as tmp:
        write_pretrained(result.model, tmp)
        atomic_write_json(tmp / MODEL_FILE, {"converter": report.kind, "build": _json_ready(result.build),
                                             "slimkit_version": __version__})
        atomic_write_json(tmp / REPORT_FILE, _json_ready(report.to_dict()))
    return d


# -- the API ---------------------------------------------------------------------------------------
def convert(kind: str, checkpoint: str | os.PathLike, output_dir: str | os.PathLike, *,
            allow_new: bool | Sequence[str] = False, allow_unused: bool = False, quiet: bool = False,
            **options: Any) -> ConversionReport:
    """Convert ``checkpoint`` of source ``kind`` into a slimkit save folder ``output_dir``; the report.

    ``options`` go to the kind's converter (``slimkit convert --list`` shows them). ``allow_new``: True,
    or fnmatch patterns of model tensors that may stay at their random initialisation; ``allow_unused``:
    drop checkpoint tensors the conversion has no place for. Refusals (:class:`ConversionError`) write
    nothing. The summary goes to stderr unless ``quiet``.
    """
    from .progress import step

    converter = get_converter(kind)
    check_options(converter, options)
    if isinstance(allow_new, str):
        allow_new = [allow_new]
    source = read_checkpoint(checkpoint, converter.allow_classes)
    with step(f"converting {kind} checkpoint {source.name}", enabled=not quiet):
        result = converter.run(source, **options)
    report = settle_books(kind, source, result, str(output_dir), allow_new=allow_new, allow_unused=allow_unused)
    write_conversion(result, report, output_dir)
    if not quiet:
        print(report.summary(), file=sys.stderr)
    return report


def read_model_spec(directory: str | os.PathLike) -> dict:
    """The ``slimkit_model.json`` of a converted folder, checked."""
    from .io import read_json, recover_folder

    d = recover_folder(directory)
    spec = read_json(d / MODEL_FILE, what="converted-model record",
                     fix="convert the checkpoint again with slimkit convert")
    valid = isinstance(spec, dict) and isinstance(spec.get("converter"), str) and isinstance(spec.get("build"), dict)
    if not valid:
        raise ConversionError(f"{str(d / MODEL_FILE)!r} does not name a converter and a build spec; convert the "
                              f"checkpoint again with slimkit convert")
    return spec


def load_converted(directory: str | os.PathLike, strict: bool = True) -> Any:
    """The model a conversion saved, in eval mode (as ``from_pretrained`` gives it): the bare model rebuilt
    from ``slimkit_model.json``, then ``slimkit.from_pretrained`` (techniques re-applied, weights loaded and
    checked)."""
    from .api import from_pretrained

    spec = read_model_spec(directory)
    model = get_converter(spec["converter"]).build(spec["build"])
    model = from_pretrained(model, directory, strict=strict)
    return model.eval() if hasattr(model, "eval") else model


# -- the command line ------------------------------------------------------------------------------
def parse_option(text: str) -> tuple[str, Any]:
    """``"shift_div=8"`` -> ``("shift_div", 8)``: values read as JSON when they parse, else as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"option {text!r} is not KEY=VALUE; write it as e.g. -o shift_div=8")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _kind_rows() -> list[tuple[str, str, str, str]]:
    rows = [("kind", "plugin", "options", "summary")]
    for c in sorted(converters().values(), key=lambda c: c.kind):
        names = c.option_names()
        rows.append((c.kind, c.plugin, "any" if names is None else (", ".join(names) or "-"), c.summary))
    return rows


@click.command("convert")
@click.argument("source_kind", required=False)
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@click.argument("output_dir", required=False, type=click.Path(file_okay=False))
@click.option("--option", "-o", "settings", multiple=True, metavar="KEY=VALUE",
              help="An option of the kind (repeatable), e.g. -o shift_div=8 -o direction=past; "
                   "values are read as JSON (numbers, true/false, lists), else as text.")
@click.option("--allow-new", "allow_new", multiple=True, metavar="PATTERN",
              help="Model tensors (fnmatch pattern, repeatable; '*' for all) that may stay at their random "
                   "initialisation, e.g. a new head.")
@click.option("--allow-unused", is_flag=True, help="Drop checkpoint tensors the conversion has no place for.")
@click.option("--list", "list_", is_flag=True, help="List the checkpoint kinds and their options.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
def convert_command(source_kind, checkpoint, output_dir, settings, allow_new, allow_unused, list_, as_json) -> None:
    """Bring your weights: convert CHECKPOINT of SOURCE_KIND into the slimkit save folder OUTPUT_DIR.

    Writes the weights, the technique stack, slimkit_model.json and conversion_report.json (every
    tensor mapped, unused or newly initialised); load the result with
    slimkit.convert.load_converted(OUTPUT_DIR).
    """
    if list_ or not source_kind:
        rows = _kind_rows()
        widths = [max(len(str(r[i])) for r in rows) for i in range(3)]
        for r in rows:
            click.echo("  ".join(str(c).ljust(w) for c, w in zip(r[:3], widths)) + "  " + str(r[3]))
        if not source_kind:
            return
    if not checkpoint or not output_dir:
        raise click.UsageError("give SOURCE_KIND CHECKPOINT OUTPUT_DIR, e.g. slimkit convert torchvision-r3d "
                               "r3d_18-b3b3357e.pth r3d18-slimkit")
    options = dict(parse_option(s) for s in settings)
    allow = True if "*" in allow_new else list(allow_new)
    report = convert(source_kind, checkpoint, output_dir, allow_new=allow, allow_unused=allow_unused,
                     quiet=as_json, **options)
    if as_json:
        click.echo(json.dumps(_json_ready(report.to_dict()), indent=2))


# -- ``slimkit.convert``: the module or the function, both work -------------------------------------
class _CallableModule(types.ModuleType):
    """``slimkit.convert`` is this module and callable as :func:`convert`, so that ``slimkit.convert(kind,
    ckpt, out)`` works even when ``import slimkit.convert`` bound the module to the name first."""

    def __call__(self, *args: Any, **kwargs: Any) -> ConversionReport:
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

PUBLIC = ("converters", "get_converter", "load_converted", "read_checkpoint", "read_model_spec", "Checkpoint",
          "Converter", "Converted", "ConversionError", "ConversionReport", "WeightMap", "convert_command",
          "MODEL_FILE", "REPORT_FILE")
for _name in PUBLIC:  # and when a lazy export bound the function instead, it carries the same names
    setattr(convert, _name, globals()[_name])

__all__ = ["convert", "converters", "get_converter", "load_converted", "read_checkpoint", "read_model_spec",
           "Checkpoint", "Converter", "Converted", "ConversionError", "ConversionReport", "WeightMap",
           "convert_command", "MODEL_FILE", "REPORT_FILE"]
