"""slimkit: efficient video and NLP models for phones, cameras and laptops.

    import slimkit
    model = slimkit.apply(model, "tsm", n_segment=8)
    slimkit.techniques()        # what is installed
    slimkit.save_pretrained(model, "out/"); slimkit.from_pretrained(base, "out/")
"""
from __future__ import annotations

from ._version import __version__
from .api import (
    apply,
    build_model,
    from_pretrained,
    get_technique,
    load_config,
    make_config,
    models,
    open_source,
    save_pretrained,
    sources,
    techniques,
)
from .config import TechniqueConfig
from .errors import (
    ConfigError,
    MissingExtraError,
    ShapeError,
    SlimkitError,
    SourceError,
    UnknownTechniqueError,
    UnsupportedModelError,
)
from .hookspecs import hookimpl
from .host import HOST
from .parts import lazy_exports
from .technique import ModelEntry, SourceEntry, Technique

# Names that need torch are imported on first use, so that ``import slimkit`` and ``slimkit --help``
# start fast (``slimkit.goal`` works as before; ``import slimkit`` alone does not import torch).
_LAZY = {
    "Benchmark": ".bench", "BenchContext": ".bench", "benchmarks": ".bench", "goal": ".bench",
    "run_benchmark": ".bench", "convert": ".convert",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


def plugins():
    """Every known plugin with its state: ``PluginInfo(name, version, available, reason, techniques)``."""
    from .inventory import plugin_infos

    return plugin_infos()


def register_plugin(plugin, name: str | None = None) -> str:
    """Register a plugin object or module at run time; returns its name."""
    return HOST.register_plugin(plugin, name)


def unregister_plugin(name: str) -> None:
    HOST.unregister_plugin(name)


def prefer(name: str, plugin: str | None) -> None:
    """Let ``plugin`` provide ``name`` (a technique, model, ...) even over a built-in; ``None`` undoes it.

    Without a preference a built-in plugin keeps its names and, between other plugins, the
    first loaded does; ``SLIMKIT_PREFER="tsm=myplug"`` does the same from the environment.
    """
    HOST.prefer(name, plugin)


__all__ = [
    "__version__", "apply", "techniques", "get_technique", "make_config", "load_config",
    "save_pretrained", "from_pretrained", "models", "build_model", "sources", "open_source",
    "plugins", "register_plugin", "unregister_plugin", "prefer", "benchmarks", "run_benchmark",
    "Benchmark", "BenchContext", "goal", "TechniqueConfig", "Technique", "ModelEntry",
    "SourceEntry", "hookimpl", "SlimkitError", "ConfigError", "MissingExtraError",
    "ShapeError", "SourceError", "UnknownTechniqueError", "UnsupportedModelError",
]
