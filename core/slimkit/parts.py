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


def _calls(parts: Sequence[str], hook: str):
    for name in parts:
        fn = getattr(importlib.import_module(name), hook, None)
        if fn is not None:
            yield fn


def delegate_hooks(namespace: dict, parts: Sequence[str]) -> None:
    """Define every hook in ``namespace`` as a call to the parts' functions of that name."""
    for hook in REGISTER_HOOKS:
        def impl(register: Any, _hook: str = hook) -> None:
            for fn in _calls(parts, _hook):
                fn(register)
        impl.__name__ = impl.__qualname__ = hook
        namespace[hook] = hookimpl(specname=hook)(impl)

    def register_commands(cli: Any) -> None:
        for fn in _calls(parts, "register_commands"):
            fn(cli)
    namespace["register_commands"] = hookimpl(register_commands)
