"""The pieces a plugin is built from: parts, lazy callables and lazy exports.

A plugin's entry-point module calls ``delegate_hooks(globals(), PARTS)``; for
every hook, the plugin then calls the function of the same name in each part
module that defines it (parts are imported lazily, when the hook fires).
A registration builds its ``Technique`` with ``technique(ConfigClass, apply)`` (name from the config
class, summary from ``registry.toml``) and refers to a work function with ``lazy("package.module:function")``,
and a package ``__init__`` exports names lazily with
``__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)``.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping, Sequence

from .hookspecs import hookimpl

REGISTER_HOOKS = ("register_techniques", "register_models", "register_sources",
                  "register_benchmarks", "register_macs_counters")


class PartsFailed(RuntimeError):
    """Some parts of a plugin failed; the others registered normally."""


def _call_parts(parts: Sequence[str], hook: str, arg: Any) -> None:
    """Call ``hook(arg)`` in every part; a failing part does not stop the others."""
    failures = []
    for name in parts:
        try:
            fn = getattr(importlib.import_module(name), hook, None)
            if fn is not None:
                fn(arg)
        except Exception as e:
            failures.append(f"part {name}: {type(e).__name__}: {e}")
    if failures:
        raise PartsFailed("; ".join(failures))


def delegate_hooks(namespace: dict, parts: Sequence[str]) -> None:
    """Define every hook in ``namespace`` as a call to the parts' functions of that name."""
    for hook in REGISTER_HOOKS:
        def impl(register: Any, _hook: str = hook) -> None:
            _call_parts(parts, _hook, register)
        impl.__name__ = impl.__qualname__ = hook
        namespace[hook] = hookimpl(specname=hook)(impl)

    def register_commands(cli: Any) -> None:
        _call_parts(parts, "register_commands", cli)
    namespace["register_commands"] = hookimpl(register_commands)


def lazy(target: str):
    """A callable standing for ``"package.module:function"``, imported on first call.

    Registration modules use it so that ``slimkit plugins`` and the CLI start without importing
    heavy dependencies (transformers, decord) that only the technique's work needs.
    """
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"lazy target must look like 'package.module:function', got {target!r}")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__name__ = call.__qualname__ = attr
    call.__doc__ = f"Calls {target} (imported on first use)."
    return call


def technique(config_class: type, apply: Callable[[Any, Any], Any], summary: str = "") -> Any:
    """The ``slimkit.Technique`` of ``config_class``, named and described in one place each.

        register(technique(TSMConfig, lazy("slimkit_video.tsm.transform:apply_tsm")))

    The name is ``config_class.technique`` (the config's ``"type"``); the summary is the technique's
    in ``registry.toml``, and ``summary`` is used only for a technique the catalogue does not list
    (a third-party plugin's).
    """
    from .errors import ConfigError
    from .registry import registry
    from .technique import Technique

    name = getattr(config_class, "technique", "")
    if not name:
        raise ConfigError(f"{getattr(config_class, '__qualname__', config_class)} has no technique name; "
                          f"set the class attribute technique = \"my-technique\" on the config")
    entry = registry().techniques.get(name)
    return Technique(name, config_class, apply, entry.summary if entry is not None else summary)


def lazy_exports(module_name: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a package that exports names lazily.

        _EXPORTS = {"TSMConfig": ".config", "temporal_shift": ".shift"}
        __all__ = sorted(_EXPORTS)
        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

    ``exports`` maps each exported name to the module that defines it: relative to ``module_name``
    when it starts with a dot (``".config"``), absolute otherwise (``"slimkit_video.online"``).
    That module is imported on first access and the value is stored on the package, so that later
    accesses cost nothing (and win over a submodule of the same name). Any other name raises
    ``AttributeError`` naming the package, as a missing attribute does. Importing the package itself
    imports none of the exporting modules (torch and transformers load only when a name is used).
    """
    table = dict(exports)

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(target, module_name), name)
        setattr(sys.modules[module_name], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[module_name])) | set(table))

    __getattr__.__qualname__ = f"{module_name}.__getattr__"
    __dir__.__qualname__ = f"{module_name}.__dir__"
    return __getattr__, __dir__
