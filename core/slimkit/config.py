"""Technique configs: versioned, serialisable dataclasses with a type discriminator.

Subclass ``TechniqueConfig`` with ``@dataclass``, set the class variables
``technique`` (the registered name, written as ``"type"``) and ``version``, and
override ``validate()`` for range checks. Field annotations are enforced when a
config is built, so a wrong option type fails with one clear sentence.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from .errors import ConfigError, one_of

CONFIG_FILE = "slimkit_config.json"


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + one_of(typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation ``hint``; return it (lists -> tuples where declared)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    bad = ConfigError(
        f"option {name!r} must be {_type_name(hint)}, got {type(value).__name__} {value!r}"
    )
    if hint is Any:
        return value
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise ConfigError(f"option {name!r} must be one of {one_of(args)}, got {value!r}")
    if origin in (Union, types.UnionType):
        for a in args:
            try:
                return coerce(name, value, a)
            except ConfigError:
                continue
        raise bad
    if hint is type(None):
        if value is None:
            return None
        raise bad
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise bad
            return tuple(coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [coerce(f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or hint is tuple) else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise bad
    return value


@dataclasses.dataclass
class TechniqueConfig:
    """Base of every technique config (see the module docstring)."""

    technique: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.name in hints:
                object.__setattr__(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` for values out of range (subclasses override)."""

    # -- construction ---------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls, **options: Any) -> "TechniqueConfig":
        """Build from keyword options; unknown names raise an error listing the valid ones."""
        valid = cls.field_names()
        unknown = [k for k in options if k not in valid]
        if unknown:
            raise ConfigError(
                f"unknown option {unknown[0]!r} for technique {cls.technique!r}; "
                f"valid options are {one_of(valid)}"
            )
        return cls(**options)

    def replace(self, **options: Any) -> "TechniqueConfig":
        """A copy with ``options`` overriding fields (validated like ``from_options``)."""
        return type(self).from_options(**{**self._field_values(), **options})

    # -- serialisation --------------------------------------------------------------
    def _field_values(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict:
        """JSON-ready dict: ``type`` and ``version`` first, then the fields."""
        def plain(v):
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, list):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v
        return {"type": self.technique, "version": self.version,
                **{k: plain(v) for k, v in self._field_values().items()}}

    @classmethod
    def migrate(cls, data: dict, from_version: int) -> dict:
        """Upgrade the fields of an older config version (subclasses override when they bump)."""
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TechniqueConfig":
        data = dict(data)
        kind = data.pop("type", None)
        if kind != cls.technique:
            raise ConfigError(
                f"config type {kind!r} cannot be read as a {cls.technique!r} config; "
                f"use slimkit.load_config() to dispatch on the type"
            )
        version = data.pop("version", 1)
        if not isinstance(version, int) or version > cls.version:
            raise ConfigError(
                f"this {kind!r} config has version {version}, newer than the {cls.version} "
                f"this slimkit reads; upgrade slimkit (pip install -U slimkit)"
            )
        if version < cls.version:
            data = cls.migrate(data, version)
        return cls.from_options(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``slimkit_config.json`` into ``directory`` (created); return its path."""
        from .io import atomic_write_text

        return atomic_write_text(Path(directory) / CONFIG_FILE, self.to_json() + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "TechniqueConfig":
        return cls.from_dict(read_config_file(directory))


def read_config_file(path: str | os.PathLike) -> dict:
    """Read a config dict from a directory (its slimkit_config.json) or a JSON file."""
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_FILE
    if not p.exists():
        raise ConfigError(f"no slimkit config at {str(p)!r}; save one with config.save_pretrained(dir)")
    from .io import FileFormatError, read_json

    try:
        data = read_json(p, what="slimkit config", fix="re-save it with config.save_pretrained(dir)")
    except FileFormatError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(data, dict) or "type" not in data:
        raise ConfigError(f"{str(p)!r} has no 'type' field, so it is not a slimkit technique config")
    return data
