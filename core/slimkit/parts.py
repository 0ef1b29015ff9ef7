"""Split one plugin into parts: one module per technique, each with its own hook functions.

A plugin's entry-point module calls ``delegate_hooks(globals(), PARTS)``; for
every hook, the plugin then calls the function of the same name in each part
module that defines it (parts are imported lazily, when the hook fires).
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence

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
