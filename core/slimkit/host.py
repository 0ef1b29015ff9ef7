"""The pluggy host: finds plugins, loads them safely, and collects what they register.

Plugins come from the ``slimkit.plugins`` entry-point group (built-ins too).
``SLIMKIT_LOAD_PLUGINS`` limits which load: unset loads all, ``""`` loads none,
``"video,nlp"`` loads those; a name that matches no installed plugin is warned about
(``PluginSelectionWarning``), since it selects nothing. A plugin whose dependencies are missing or that
raises on import or in a hook is listed as unavailable with the reason; the
host and the other plugins keep working.

Names are first come, first served, except that a built-in plugin (one listed
in registry.toml's ``[plugins]``) always keeps its names: when two plugins
register the same technique, model, source, benchmark, ..., the other
registration is refused, listed in ``slimkit plugins`` and warned about once.
A plugin replaces a name only when the user asks for it, with
``SLIMKIT_PREFER="tsm=myplug,other=plug2"`` or ``slimkit.prefer("tsm", "myplug")``.
Plugin names follow the same rule: an entry point that reuses a built-in's plugin
name (or, for other names, one found earlier) is refused and listed, not loaded.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import ConfigError, one_of
from .registry import registry

ENTRY_POINT_GROUP = "slimkit.plugins"
ENV_VAR = "SLIMKIT_LOAD_PLUGINS"
PREFER_ENV_VAR = "SLIMKIT_PREFER"
PREFER_FUNCTION = "slimkit.prefer"

_KINDS = {
    "register_techniques": "technique",
    "register_models": "model",
    "register_sources": "source",
    "register_benchmarks": "benchmark",
    "register_macs_counters": "Mult-Adds counter",
}


class PluginClashWarning(UserWarning):
    """Two plugins registered the same name; the refused registration is listed in ``slimkit plugins``."""


class PluginSelectionWarning(UserWarning):
    """``SLIMKIT_LOAD_PLUGINS`` names a plugin that is not installed (so it selects nothing)."""


def unmatched_selection_warning(allowed: set[str], installed) -> str | None:
    """The sentence for ``SLIMKIT_LOAD_PLUGINS`` names that match no installed plugin, or ``None``."""
    unknown = sorted(allowed - set(installed))
    if not unknown:
        return None
    names = ", ".join(repr(n) for n in unknown)
    known = ", ".join(repr(n) for n in sorted(installed)) or "none"
    return (f"{ENV_VAR} names {names}, which no installed plugin is called (installed: {known}); use the "
            f"plugin names `slimkit plugins` lists (entry-point names in {ENTRY_POINT_GROUP!r}, not package names)")


@dataclass
class PluginInfo:
    """One row of ``slimkit plugins``.

    ``refused``: sentences about this plugin's registrations that are not used because
    another plugin holds the name; ``overrides``: sentences about names this plugin
    holds that another plugin registered too.
    """

    name: str
    version: str = ""
    available: bool = False
    reason: str = ""
    module: str = ""
    techniques: list = field(default_factory=list)
    install_hint: str = ""
    refused: list = field(default_factory=list)
    overrides: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "available": self.available,
            "reason": self.reason,
            "techniques": sorted(self.techniques),
            "install": self.install_hint,
            "refused": list(self.refused),
            "overrides": list(self.overrides),
        }


@dataclass(frozen=True)
class Preference:
    """The user's explicit choice of the plugin that provides a name."""

    plugin: str
    origin: str  # PREFER_ENV_VAR or PREFER_FUNCTION

    def undo_hint(self, name: str) -> str:
        """How to drop this preference, for error messages."""
        if self.origin == PREFER_ENV_VAR:
            return f"remove {name}={self.plugin} from {PREFER_ENV_VAR}"
        return f"call {PREFER_FUNCTION}({name!r}, None)"


@dataclass(frozen=True)
class Clash:
    """Two plugins registered the same ``name`` of one ``kind``; ``winner`` holds it."""

    kind: str
    name: str
    winner: str
    loser: str
    winner_builtin: bool
    loser_builtin: bool
    preference: Preference | None = None

    def _owner(self, plugin: str, builtin: bool) -> str:
        return f"built-in plugin {plugin!r}" if builtin else f"plugin {plugin!r}"

    def refusal(self) -> str:
        """The sentence shown on the losing plugin."""
        if self.preference is not None:
            return (f"{self.kind} {self.name!r} not used: {self._owner(self.winner, self.winner_builtin)} "
                    f"replaces it because {self.preference.origin} asks for it")
        return (f"{self.kind} {self.name!r} refused: already registered by "
                f"{self._owner(self.winner, self.winner_builtin)}; to use this one, run with "
                f"{PREFER_ENV_VAR}={self.name}={self.loser}")

    def note(self) -> str:
        """The sentence shown on the winning plugin."""
        loser = self._owner(self.loser, self.loser_builtin)
        if self.preference is not None:
            return f"{self.kind} {self.name!r} replaces {loser}'s because {self.preference.origin} asks for it"
        return f"{self.kind} {self.name!r} kept; {loser} also registers it (refused)"


def kind_of(hook_name: str) -> str:
    """What one registration of ``hook_name`` is called in messages (``technique``, ``model``, ...)."""
    if hook_name in _KINDS:
        return _KINDS[hook_name]
    return hook_name.removeprefix("register_").removesuffix("s").replace("_", " ")


def key_label(key: Any) -> str:
    """A registration key as users write it: the name itself, or a class's qualified name."""
    if isinstance(key, str):
        return key
    return getattr(key, "__qualname__", None) or str(key)


def parse_preferences(raw: str) -> dict[str, str]:
    """``"tsm=myplug, other=plug2"`` -> ``{"tsm": "myplug", "other": "plug2"}``."""
    prefs: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, plugin = (s.strip() for s in part.partition("="))
        if not sep or not name or not plugin:
            raise ConfigError(f"{PREFER_ENV_VAR} entry {part.strip()!r} is not NAME=PLUGIN; "
                              f"write it as e.g. {PREFER_ENV_VAR}=tsm=myplug,other=plug2")
        prefs[name] = plugin
    return prefs


def _entry_points() -> tuple[dict, list]:
    """Entry points by plugin name, and the ones refused because another took their name.

    A built-in's name goes to the module registry.toml names; any other name to the first
    distribution found, so that installing a package never silently swaps a plugin.
    """
    builtin_modules = {name: entry.module for name, entry in registry().plugins.items()}
    chosen: dict = {}
    refused: list = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        held = chosen.get(ep.name)
        if held is None:
            chosen[ep.name] = ep
            continue
        if held.value == ep.value:  # the same plugin seen twice
            continue
        if ep.value == builtin_modules.get(ep.name):
            chosen[ep.name], ep = ep, held
        refused.append(ep)
    return chosen, refused


def _entry_point_refusal(ep: Any, holder: Any) -> str:
    """The sentence shown for an entry point whose plugin name another distribution holds."""
    dist = ep.dist.name if ep.dist else "an unknown distribution"
    return (f"plugin name {ep.name!r} of {dist} ({ep.value}) refused: already taken by {holder.value}; "
            f"uninstall one of the two distributions")


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
        self._clashes: dict[str, list[Clash]] = {}
        self._preferred: dict[str, str] = {}  # from prefer(); wins over SLIMKIT_PREFER
        self._prefer_env_seen: str | None = os.environ.get(PREFER_ENV_VAR)
        self._warned: set[str] = set()  # warnings already given, so each is given once
        self._load_refusals: dict[str, list[str]] = {}  # plugin name -> refused entry points

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
            reg = registry()
            allowed = _allowed()
            eps, refused = _entry_points()
            if allowed is not None:
                sentence = unmatched_selection_warning(allowed, eps)
                if sentence is not None:
                    self._warn_once(sentence, PluginSelectionWarning)
            self._load_refusals = {}
            for ep in refused:
                sentence = _entry_point_refusal(ep, eps[ep.name])
                self._load_refusals.setdefault(ep.name, []).append(sentence)
                self._warn_once(sentence)
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
            self._invalidate()

    def ensure_loaded(self) -> pluggy.PluginManager:
        with self._lock:
            if self.pm is None:
                self.load()
            assert self.pm is not None  # load() always sets it
            return self.pm

    def register_plugin(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object or module at run time (tests, notebooks)."""
        with self._lock:
            pm = self.ensure_loaded()
            registered = pm.register(plugin, name=name)
            if registered is None:  # pluggy returns None for a plugin it blocks
                raise ConfigError(f"plugin {name!r} is blocked and cannot be registered; unblock it first")
            mod = getattr(plugin, "__name__", type(plugin).__name__)
            self.infos[registered] = PluginInfo(name=registered, available=True, module=mod)
            self._invalidate()
            return registered

    def unregister_plugin(self, name: str) -> None:
        with self._lock:
            pm = self.ensure_loaded()
            pm.unregister(name=name)
            self.infos.pop(name, None)
            self._invalidate()

    def _invalidate(self) -> None:
        """Forget every collected table and the name clashes found while building them."""
        self._tables = {}
        self._clashes = {}
        self._annotate_infos()

    # -- preferences ------------------------------------------------------------------------
    def prefer(self, name: str, plugin: str | None) -> None:
        """Let ``plugin`` provide ``name`` even over a built-in; ``plugin=None`` drops the choice."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{PREFER_FUNCTION} needs the registered name to take over, got {name!r}; "
                              f"pass e.g. {PREFER_FUNCTION}('tsm', 'myplug')")
        if plugin is not None and (not isinstance(plugin, str) or not plugin.strip()):
            raise ConfigError(f"{PREFER_FUNCTION} needs a plugin name (or None to drop the choice), got "
                              f"{plugin!r}; pass e.g. {PREFER_FUNCTION}({name!r}, 'myplug')")
        with self._lock:
            if plugin is None:
                self._preferred.pop(name.strip(), None)
            else:
                self._preferred[name.strip()] = plugin.strip()
            self._invalidate()

    def preferences(self) -> dict[str, Preference]:
        """The user's choices: ``SLIMKIT_PREFER`` overlaid by ``slimkit.prefer`` calls."""
        prefs = {name: Preference(plugin, PREFER_ENV_VAR)
                 for name, plugin in parse_preferences(os.environ.get(PREFER_ENV_VAR, "")).items()}
        prefs.update({name: Preference(plugin, PREFER_FUNCTION) for name, plugin in self._preferred.items()})
        return prefs

    def _notice_preference_env_change(self) -> None:
        """Rebuild the tables when ``SLIMKIT_PREFER`` changed since they were built."""
        current = os.environ.get(PREFER_ENV_VAR)
        if current != self._prefer_env_seen:
            self._prefer_env_seen = current
            self._invalidate()

    # -- collecting -----------------------------------------------------------------------
    def collect(self, hook_name: str, key: Callable[[Any], str], make: Callable[..., Any]) -> dict:
        """Call ``hook_name`` on every plugin, building items with ``make(*args)``.

        Each plugin's implementation is called on its own so that items are
        attributed to the plugin and a failing hook disables only that plugin.
        When several plugins register one key, a built-in plugin keeps it, else the
        first loaded one does, unless the user prefers another (``SLIMKIT_PREFER``,
        ``slimkit.prefer``); the others are refused and noted on both plugins.
        Returns ``{key(item): item}``, cached until plugins or preferences change.
        """
        with self._lock:
            self._notice_preference_env_change()
            if hook_name in self._tables:
                return self._tables[hook_name]
            pm = self.ensure_loaded()
            offers = self._gather_offers(pm, hook_name, key, make)
            table, clashes = self._settle(hook_name, offers)
            self._tables[hook_name] = table
            self._clashes[hook_name] = clashes
            self._annotate_infos()
            for clash in clashes:
                if clash.preference is None:  # the user did not ask for this one
                    self._warn_once(f"plugin {clash.loser!r}: {clash.refusal()}")
            if hook_name == "register_techniques":
                for info in self.infos.values():
                    info.techniques = [n for n, t in table.items() if t.plugin == info.name]
            return table

    def _impls_in_load_order(self, pm: pluggy.PluginManager, hook_name: str) -> list:
        """The hook's implementations, ordered as their plugins were registered."""
        rank = {name: i for i, (name, _) in enumerate(pm.list_name_plugin())}
        impls = getattr(pm.hook, hook_name).get_hookimpls()
        return sorted(impls, key=lambda impl: rank.get(impl.plugin_name, len(rank)))

    def _gather_offers(self, pm: pluggy.PluginManager, hook_name: str, key: Callable[[Any], Any],
                       make: Callable[..., Any]) -> dict[Any, list[tuple[str, Any]]]:
        """``{key: [(plugin, item), ...]}`` in load order; a plugin's repeated key counts once."""
        offers: dict[Any, list[tuple[str, Any]]] = {}
        for impl in self._impls_in_load_order(pm, hook_name):
            for item in self._call_impl(impl, hook_name, make):
                entries = offers.setdefault(key(item), [])
                if all(plugin != impl.plugin_name for plugin, _ in entries):
                    entries.append((impl.plugin_name, item))
        return offers

    def call_isolated(self, impl: Any, hook_name: str, arg: Any) -> bool:
        """Call one plugin's implementation ``impl`` of ``hook_name`` with ``arg``; a failure stays in
        that plugin. The one place hook failures are isolated (the CLI calls ``register_commands``
        through it too).

        A hook that raises marks its plugin unavailable with the reason (``slimkit plugins`` shows it)
        and returns ``False``: drop what it registered. A plugin split into parts whose parts partly
        failed (``PartsFailed``) stays available with the reason noted, and returns ``True``: keep what
        the other parts registered.
        """
        try:
            impl.function(arg)
            return True
        except Exception as e:  # a broken plugin must not break the host, the CLI or the other plugins
            from .parts import PartsFailed

            info = self.infos.setdefault(impl.plugin_name, PluginInfo(name=impl.plugin_name))
            if isinstance(e, PartsFailed):
                info.reason = f"{hook_name} partly failed: {e}"
                return True
            info.available = False
            info.reason = f"{hook_name} failed: {type(e).__name__}: {e}"
            return False

    def _call_impl(self, impl: Any, hook_name: str, make: Callable[..., Any]) -> list:
        """The items one plugin registers (none when its hook fails: :meth:`call_isolated`)."""
        plugin_name = impl.plugin_name
        items: list = []

        def register(*args, **kwargs):
            item = make(*args, **kwargs)
            if hasattr(item, "plugin"):
                item.plugin = plugin_name
            items.append(item)

        return items if self.call_isolated(impl, hook_name, register) else []

    def _settle(self, hook_name: str, offers: dict) -> tuple[dict, list[Clash]]:
        """Pick one plugin per key; returns the table and the refused registrations."""
        kind = kind_of(hook_name)
        prefs = self.preferences()
        builtins = set(registry().plugins)
        table: dict = {}
        clashes: list[Clash] = []
        for k, entries in offers.items():
            name = key_label(k)
            plugins = [plugin for plugin, _ in entries]
            pref = prefs.get(name)
            winner = self._choose(kind, name, plugins, pref, builtins)
            for plugin, item in entries:
                if plugin == winner:
                    if hasattr(item, "plugin"):
                        item.plugin = plugin
                    table[k] = item
                else:
                    clashes.append(Clash(kind, name, winner, plugin, winner in builtins, plugin in builtins,
                                         pref if pref is not None and pref.plugin == winner else None))
        return table, clashes

    def _choose(self, kind: str, name: str, plugins: list[str], pref: Preference | None,
                builtins: set[str]) -> str:
        """The plugin that provides ``name``: the preferred one, else a built-in, else the first loaded."""
        if pref is not None:
            if pref.plugin in plugins:
                return pref.plugin
            raise self._unmet_preference(kind, name, plugins, pref)
        return next((p for p in plugins if p in builtins), plugins[0])

    def _unmet_preference(self, kind: str, name: str, plugins: list[str], pref: Preference) -> ConfigError:
        """The error for a preference naming a plugin that does not register ``name``."""
        info = self.infos.get(pref.plugin)
        if info is None:
            why = f"no plugin {pref.plugin!r} is loaded"
        elif not info.available:
            why = f"plugin {pref.plugin!r} is unavailable ({info.reason})"
        else:
            why = f"plugin {pref.plugin!r} does not register it"
        return ConfigError(f"{pref.origin} asks for {kind} {name!r} from plugin {pref.plugin!r}, but {why} "
                           f"({kind} {name!r} comes from {one_of(plugins)}); name one of those plugins "
                           f"or {pref.undo_hint(name)}")

    def _annotate_infos(self) -> None:
        """Write every known clash onto both plugins' ``PluginInfo`` (refused entry points too)."""
        for info in self.infos.values():
            info.refused, info.overrides = list(self._load_refusals.get(info.name, [])), []
        for clashes in self._clashes.values():
            for clash in clashes:
                self.infos.setdefault(clash.loser, PluginInfo(name=clash.loser)).refused.append(clash.refusal())
                self.infos.setdefault(clash.winner, PluginInfo(name=clash.winner)).overrides.append(clash.note())

    def _warn_once(self, sentence: str, category: type[Warning] = PluginClashWarning) -> None:
        """A warning (``PluginClashWarning`` unless told) with ``sentence``, once per process."""
        if sentence not in self._warned:
            self._warned.add(sentence)
            warnings.warn(category(sentence), stacklevel=4)

    def plugin_infos(self) -> list[PluginInfo]:
        """Every known plugin as far as the tables built so far tell (``slimkit.api.plugin_infos`` builds
        every table first, so that the infos list techniques and every name clash)."""
        self.ensure_loaded()
        return sorted(self.infos.values(), key=lambda i: i.name)


HOST = Host()
