"""The pluggy host: finds plugins, loads them safely, and collects what they register.

Plugins come from the ``slimkit.plugins`` entry-point group (built-ins too).
``SLIMKIT_LOAD_PLUGINS`` limits which load: unset loads all, ``""`` loads none,
``"video,nlp"`` loads those. A plugin whose dependencies are missing or that
raises on import or in a hook is listed as unavailable with the reason; the
host and the other plugins keep working.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from . import hookspecs
from .registry import registry

ENTRY_POINT_GROUP = "slimkit.plugins"
ENV_VAR = "SLIMKIT_LOAD_PLUGINS"


@dataclass
class PluginInfo:
    """One row of ``slimkit plugins``."""

    name: str
    version: str = ""
    available: bool = False
    reason: str = ""
    module: str = ""
    techniques: list = field(default_factory=list)
    install_hint: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "available": self.available,
            "reason": self.reason,
            "techniques": sorted(self.techniques),
            "install": self.install_hint,
        }


def _allowed() -> set[str] | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _missing_imports(names) -> list[str]:
    missing = []
    for mod in names:
        try:
            if importlib.util.find_spec(mod) is None:
                missing.append(mod)
        except (ImportError, ValueError):
            missing.append(mod)
    return missing


class Host:
    """Owns the ``pluggy.PluginManager`` and caches what hooks register."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.pm: pluggy.PluginManager | None = None
        self.infos: dict[str, PluginInfo] = {}
        self._tables: dict[str, dict] = {}

    # -- loading ------------------------------------------------------------------------
    def _new_manager(self) -> pluggy.PluginManager:
        pm = pluggy.PluginManager("slimkit")
        pm.add_hookspecs(hookspecs)
        return pm

    def load(self) -> None:
        """(Re)discover and load plugins from entry points."""
        with self._lock:
            self.pm = self._new_manager()
            self.infos = {}
            self._tables = {}
            reg = registry()
            allowed = _allowed()
            eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
            for name, ep in sorted(eps.items()):
                entry = reg.plugins.get(name)
                info = PluginInfo(name=name, module=ep.value,
                                  install_hint=entry.install_hint if entry else "")
                try:
                    info.version = ep.dist.version if ep.dist else ""
                except Exception:  # pragma: no cover - broken metadata
                    info.version = ""
                self.infos[name] = info
                if allowed is not None and name not in allowed:
                    info.reason = f"not loaded: {ENV_VAR} does not include {name!r}"
                    continue
                if entry is not None:
                    missing = _missing_imports(entry.requires)
                    if missing:
                        info.reason = (f"missing dependency {', '.join(missing)}: "
                                       f"{entry.install_hint}")
                        continue
                try:
                    module = ep.load()
                except Exception as e:  # a broken plugin must not break the host
                    info.reason = f"failed to import {ep.value}: {type(e).__name__}: {e}"
                    continue
                self.pm.register(module, name=name)
                info.available = True
            for name, entry in reg.plugins.items():
                if name not in self.infos:
                    self.infos[name] = PluginInfo(
                        name=name, module=entry.module, install_hint=entry.install_hint,
                        reason=f"not installed: {entry.install_hint}")

    def ensure_loaded(self) -> pluggy.PluginManager:
        with self._lock:
            if self.pm is None:
                self.load()
            return self.pm

    def register_plugin(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object or module at run time (tests, notebooks)."""
        with self._lock:
            pm = self.ensure_loaded()
            name = pm.register(plugin, name=name)
            mod = getattr(plugin, "__name__", type(plugin).__name__)
            self.infos[name] = PluginInfo(name=name, available=True, module=mod)
            self._tables = {}
            return name

    def unregister_plugin(self, name: str) -> None:
        with self._lock:
            pm = self.ensure_loaded()
            pm.unregister(name=name)
            self.infos.pop(name, None)
            self._tables = {}

    # -- collecting -----------------------------------------------------------------------
    def collect(self, hook_name: str, key: Callable[[Any], str], make: Callable[..., Any]) -> dict:
        """Call ``hook_name`` on every plugin, building items with ``make(*args)``.

        Each plugin's implementation is called on its own so that items are
        attributed to the plugin and a failing hook disables only that plugin.
        Returns ``{key(item): item}``, cached until plugins change.
        """
        with self._lock:
            if hook_name in self._tables:
                return self._tables[hook_name]
            pm = self.ensure_loaded()
            table: dict = {}
            hook = getattr(pm.hook, hook_name)
            for impl in reversed(hook.get_hookimpls()):  # registration order
                plugin_name = impl.plugin_name
                items: list = []

                def register(*args, **kwargs):
                    item = make(*args, **kwargs)
                    if hasattr(item, "plugin"):
                        item.plugin = plugin_name
                    items.append(item)

                try:
                    impl.function(register)
                except Exception as e:
                    info = self.infos.setdefault(plugin_name, PluginInfo(name=plugin_name))
                    from .parts import PartsFailed

                    if isinstance(e, PartsFailed):  # the other parts registered: keep them
                        info.reason = f"{hook_name} partly failed: {e}"
                    else:
                        info.available = False
                        info.reason = f"{hook_name} failed: {type(e).__name__}: {e}"
                        continue
                for item in items:
                    table.setdefault(key(item), item)
            self._tables[hook_name] = table
            if hook_name == "register_techniques":
                for info in self.infos.values():
                    info.techniques = [n for n, t in table.items() if t.plugin == info.name]
            return table

    def plugin_infos(self) -> list[PluginInfo]:
        from .api import techniques  # fills the technique lists
        techniques()
        self.ensure_loaded()
        return sorted(self.infos.values(), key=lambda i: i.name)


HOST = Host()
