"""The public API: look up techniques, apply them, save and restore transformed models."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import TechniqueConfig, read_config_file
from .errors import ConfigError, MissingExtraError, SourceError, UnknownTechniqueError, one_of
from .host import HOST
from .registry import install_command, registry
from .technique import ModelEntry, SourceEntry, Technique

APPLIED_ATTR = "slimkit_configs"
STACK_FILE = "slimkit_applied.json"
WEIGHTS_FILE = "model.safetensors"


def _technique_item(*args, **kwargs) -> Technique:
    if len(args) == 1 and not kwargs and isinstance(args[0], Technique):
        return args[0]
    return Technique(*args, **kwargs)


def techniques() -> dict[str, Technique]:
    """Registered techniques by name (from every loaded plugin)."""
    return HOST.collect("register_techniques", key=lambda t: t.name, make=_technique_item)


def _not_available(kind: str, name: str, plugin: str | None) -> Exception | None:
    """An install hint when ``plugin`` is in the catalogue but not loaded."""
    if plugin is None:
        return None
    reg = registry()
    info = HOST.infos.get(plugin)
    entry = reg.plugins.get(plugin)
    hint = entry.install_hint if entry else install_command(plugin)
    if info is None or info.reason.startswith(("not installed", "missing dependency")):
        return MissingExtraError(
            f"{kind} {name!r} is provided by plugin {plugin!r}, which is not installed: {hint}")
    if not info.available:
        return MissingExtraError(
            f"{kind} {name!r} is provided by plugin {plugin!r}, which is unavailable ({info.reason})")
    return None


def get_technique(name: str) -> Technique:
    """The technique called ``name``; a clear error with the fix when it is not there."""
    table = techniques()
    if not isinstance(name, str):
        raise ConfigError(f"technique must be a name or a config instance, got {type(name).__name__}")
    if name in table:
        return table[name]
    entry = registry().techniques.get(name)
    err = _not_available("technique", name, entry.plugin if entry else None)
    if err is not None:
        raise err
    raise UnknownTechniqueError(f"unknown technique {name!r}; known techniques are {one_of(table)}")


def make_config(technique: str | TechniqueConfig, **options: Any) -> TechniqueConfig:
    """A validated config for ``technique`` (a name or a config), ``options`` overriding fields."""
    if isinstance(technique, TechniqueConfig):
        get_technique(technique.technique)
        return technique.replace(**options) if options else technique
    return get_technique(technique).config_class.from_options(**options)


def apply(model: Any, technique: str | TechniqueConfig, **options: Any) -> Any:
    """Apply a technique to ``model`` and return the transformed model.

    ``technique`` is a registered name (``"tsm"``) or a config instance;
    ``options`` override config fields. The config is recorded on the model
    (``model.slimkit_configs``) so that ``slimkit.save_pretrained`` can restore it.
    """
    config = make_config(technique, **options)
    tech = get_technique(config.technique)
    out = tech.apply(model, config)
    if out is None:
        out = model
    applied = list(getattr(out, APPLIED_ATTR, []) or [])
    applied.append(config)
    try:
        object.__setattr__(out, APPLIED_ATTR, applied)
    except (AttributeError, TypeError):  # pragma: no cover - exotic objects
        pass
    return out


def load_config(path: str | os.PathLike | dict) -> TechniqueConfig:
    """Read a saved config (directory, JSON file or dict) and build the right class from its type."""
    data = dict(path) if isinstance(path, dict) else read_config_file(path)
    kind = data.get("type")
    table = techniques()
    if kind in table:
        return table[kind].config_class.from_dict(data)
    entry = registry().techniques.get(kind) if isinstance(kind, str) else None
    err = _not_available("technique", str(kind), entry.plugin if entry else None)
    if err is not None:
        raise err
    raise ConfigError(f"unknown config type {kind!r}; known types are {one_of(table)}")


#: files a slimkit save writes; a folder holding anything else is not replaced by a save
SAVE_FILES = frozenset({STACK_FILE, WEIGHTS_FILE, "slimkit_config.json"})


def write_pretrained(model: Any, folder: str | os.PathLike) -> Path:
    """Write the applied configs (in order) and the weights into ``folder`` (created), not atomically.

    Building block of :func:`save_pretrained`; use it inside ``slimkit.io.atomic_folder`` when a
    checkpoint adds files of its own. The weights are written first, the config stack last.
    """
    from safetensors.torch import save_model

    from ._version import __version__
    from .config import CONFIG_FILE
    from .io import atomic_write_json

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    configs = list(getattr(model, APPLIED_ATTR, []) or [])
    save_model(model, str(d / WEIGHTS_FILE))
    if len(configs) == 1:
        atomic_write_json(d / CONFIG_FILE, configs[0].to_dict())
    atomic_write_json(d / STACK_FILE, {"slimkit_version": __version__,
                                       "techniques": [c.to_dict() for c in configs]})
    return d


def _refuse_foreign_folder(d: Path, expected: frozenset) -> None:
    """A save replaces the whole folder: refuse one that holds files a save would not write."""
    if not d.is_dir():
        return
    foreign = sorted(p.name for p in d.iterdir() if p.name not in expected and not p.name.startswith("."))
    if foreign and not (d / STACK_FILE).exists():
        raise ConfigError(f"{str(d)!r} already holds files that slimkit did not write ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}), and a save replaces the whole folder; "
                          f"save into a new or empty folder")


def save_pretrained(model: Any, directory: str | os.PathLike) -> Path:
    """Save a transformed model: the applied configs (in order) and its weights (safetensors).

    Atomic: everything is written into a temporary folder beside ``directory`` and renamed into
    place, so a kill leaves either the old complete save or the new one, and files of an older
    save that this one does not write are gone. A folder holding files slimkit did not write is
    refused rather than replaced.
    """
    from .io import atomic_folder

    d = Path(directory)
    _refuse_foreign_folder(d, SAVE_FILES)
    with atomic_folder(d) as tmp:
        write_pretrained(model, tmp)
    return d


def read_applied_stack(directory: str | os.PathLike) -> list[dict]:
    """The technique configs a save recorded, in order (``slimkit_applied.json``), checked."""
    from .io import read_json, recover_folder

    d = recover_folder(directory)
    if not d.is_dir():
        raise ConfigError(f"{str(d)!r} is not a folder; pass the folder written by slimkit.save_pretrained(model, dir)")
    stack = d / STACK_FILE
    if not stack.exists():
        raise ConfigError(f"{str(d)!r} holds no {STACK_FILE}; save it with slimkit.save_pretrained(model, dir)")
    data = read_json(stack, what="slimkit save record", fix="save the model again with slimkit.save_pretrained")
    techniques_ = data.get("techniques") if isinstance(data, dict) else None
    if not isinstance(techniques_, list) or not all(isinstance(c, dict) for c in techniques_):
        raise ConfigError(f"{str(stack)!r} has no list of technique configs; save the model again with "
                          f"slimkit.save_pretrained")
    return techniques_


def load_weights_checked(model: Any, path: str | os.PathLike, strict: bool = True) -> Any:
    """Load safetensors weights into ``model``; a missing, truncated or mismatched file is refused
    with one sentence naming the file and what is wrong (``strict=False`` allows missing keys only)."""
    from safetensors.torch import load_model

    from .io import check_safetensors

    p = Path(path)
    header = check_safetensors(p, fix="save the model again with slimkit.save_pretrained")
    own = model.state_dict()
    unexpected = sorted(set(header) - set(own))
    if unexpected:
        raise ConfigError(f"weights file {str(p)!r} has {len(unexpected)} tensors this model does not have "
                          f"(e.g. {unexpected[0]!r}), so it belongs to another model; load it into the model it "
                          f"was saved from")
    for name, (_dtype, shape) in header.items():
        if list(own[name].shape) != shape:
            raise ConfigError(f"weights file {str(p)!r} has {name!r} of shape {tuple(shape)} but the model's is "
                              f"{tuple(own[name].shape)}; load it into the model it was saved from")
    missing, _ = load_model(model, str(p), strict=False)  # knows tied weights saved once
    if missing and strict:
        raise ConfigError(f"weights file {str(p)!r} lacks {len(missing)} of this model's tensors (e.g. "
                          f"{sorted(missing)[0]!r}); load it into the model it was saved from, or pass strict=False")
    return model


def from_pretrained(model: Any, directory: str | os.PathLike, strict: bool = True) -> Any:
    """Rebuild a saved transformed model: apply the saved configs to ``model``, then load the weights.

    A folder without weights, or with truncated or mismatched weights, is refused naming the file.
    """
    d = Path(directory)
    for cfg in read_applied_stack(d):
        model = apply(model, load_config(cfg))
    weights = d / WEIGHTS_FILE
    if not weights.exists():
        raise ConfigError(f"{str(d)!r} holds no {WEIGHTS_FILE}, so the saved model's weights are missing; "
                          f"save it again with slimkit.save_pretrained(model, dir)")
    return load_weights_checked(model, weights, strict=strict)


# -- models and sources -----------------------------------------------------------------------
def _model_item(*args, **kwargs) -> ModelEntry:
    if len(args) == 1 and not kwargs and isinstance(args[0], ModelEntry):
        return args[0]
    return ModelEntry(*args, **kwargs)


def _source_item(*args, **kwargs) -> SourceEntry:
    if len(args) == 1 and not kwargs and isinstance(args[0], SourceEntry):
        return args[0]
    return SourceEntry(*args, **kwargs)


def models() -> dict[str, ModelEntry]:
    """Registered model builders by name."""
    return HOST.collect("register_models", key=lambda m: m.name, make=_model_item)


def build_model(name: str, **options: Any) -> Any:
    """Build a registered model by name."""
    table = models()
    if name not in table:
        raise ConfigError(f"unknown model {name!r}; known models are {one_of(table)}")
    return table[name].builder(**options)


def sources() -> dict[str, SourceEntry]:
    """Registered frame sources by scheme."""
    return HOST.collect("register_sources", key=lambda s: s.scheme, make=_source_item)


def open_source(spec: str, **options: Any):
    """Open a frame source: ``"webcam:0"``, ``"lavfi:testsrc2"``, ``"synthetic"`` or a file path."""
    table = sources()
    scheme, _, _rest = spec.partition(":")
    if scheme in table:
        return table[scheme].opener(spec, **options)
    if "file" in table and (os.path.exists(spec) or "/" in spec or "." in spec):
        return table["file"].opener(spec, **options)
    known = sorted(table)
    if not known:
        raise SourceError(f"no frame sources are available for {spec!r}; install them with {install_command('video')}")
    raise SourceError(f"unknown source {spec!r}; known sources are {one_of(known)} (or a path to a video file)")
