"""Every plugin with everything it registers: the one place that builds every registration table.

It imports the modules that own the tables (techniques, models and sources in ``api``, benchmarks in
``bench``, converters in ``convert``, Mult-Adds counters in ``measure.macs``); nothing in slimkit imports
it but the CLI and ``slimkit.plugins()``, so it closes no import circle.
"""
from __future__ import annotations

from .host import HOST, PluginInfo


def plugin_infos() -> list[PluginInfo]:
    """Every known plugin (``PluginInfo``), after building every registration table, so that the infos
    list each plugin's techniques and every refused name clash."""
    from .api import models, sources, techniques
    from .bench import benchmarks
    from .convert import converters
    from .measure.macs import _custom_counters

    for build in (techniques, models, sources, benchmarks, converters, _custom_counters):
        build()
    return HOST.plugin_infos()
