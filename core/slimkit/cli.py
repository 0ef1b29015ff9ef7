"""The ``slimkit`` command line: plugins, techniques, bench, and plugin commands.

Start-up stays fast: nothing here imports torch, and ``slimkit --help`` lists the plugins' commands
from an index written the last time they were loaded (``$SLIMKIT_CACHE/cli-commands.json``, rebuilt
whenever an installed plugin, its version, its source files or ``SLIMKIT_LOAD_PLUGINS`` change), so it
does not import the plugins' command modules. Every other invocation loads them for real.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from ._version import __version__
from .errors import SlimkitError
from .host import ENTRY_POINT_GROUP, ENV_VAR, HOST
from .progress import QUIET_ENV


class _Group(click.Group):
    """Prints ``SlimkitError`` as one line (exit 2) instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SlimkitError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="slimkit")
@click.option("--quiet", "-q", is_flag=True,
              help=f"No progress bars or time estimates (also off when stderr is not a terminal; "
                   f"{QUIET_ENV}=1 does the same).")
def cli(quiet: bool) -> None:
    """slimkit: make video and NLP models fast enough for phones, cameras and laptops."""
    if quiet:
        os.environ[QUIET_ENV] = "1"  # child processes (benchmark peers, launchers) stay quiet too


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """Installed and known plugins, their state and techniques."""
    from .inventory import plugin_infos

    infos = plugin_infos()
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    rows = [("plugin", "version", "state", "techniques")]
    for i in infos:
        state = (f"available ({i.reason})" if i.reason else "available") if i.available else f"unavailable: {i.reason}"
        rows.append((i.name, i.version or "-", state, ", ".join(sorted(i.techniques)) or "-"))
    _table(rows)
    _echo_refusals(infos)


def _echo_refusals(infos) -> None:
    """List the registrations refused because another plugin holds the name."""
    refused = [(i.name, sentence) for i in infos for sentence in i.refused]
    if not refused:
        return
    click.echo("\nname clashes (the refused registration is not used):")
    for plugin, sentence in refused:
        click.echo(f"  plugin {plugin!r}: {sentence}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def techniques(as_json: bool) -> None:
    """Techniques: the installed ones, and the catalogued ones with their install hint."""
    from .api import techniques as _techniques
    from .registry import registry

    table = _techniques()
    reg = registry()
    out: list[dict[str, Any]] = []
    for name in sorted(set(table) | set(reg.techniques)):
        t, e = table.get(name), reg.techniques.get(name)
        plugin = t.plugin if t is not None else (e.plugin if e is not None else "")
        hint = reg.plugins[plugin].install_hint if plugin in reg.plugins else ""
        out.append({
            "name": name, "plugin": plugin, "installed": t is not None,
            "summary": (t.summary if t and t.summary else (e.summary if e else "")),
            "paper": ({"title": e.paper_title, "arxiv": e.arxiv} if e else None),
            "config_fields": (t.config_class.field_names() if t else []),
            "install": None if t else hint,
        })
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    rows: list[tuple[str, ...]] = [("technique", "plugin", "state", "summary")]
    for r in out:
        rows.append((r["name"], r["plugin"], "installed" if r["installed"] else r["install"], r["summary"]))
    _table(rows)


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--list", "list_", is_flag=True, help="List the registered benchmarks.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the JSON (PNG goes beside it). Default bench-results/NAME.json.")
@click.option("--quick", is_flag=True, help="A small, fast version (smoke test).")
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads for timings.")
@click.option("--seed", type=int, default=0, show_default=True)
def bench(names, list_, json_path, quick, threads, seed) -> None:
    """Run benchmarks: writes JSON and a PNG plot for each."""
    from pathlib import Path

    from .bench import QUICK_NOTE, benchmarks, goal_line, run_benchmark
    from .errors import ConfigError, one_of

    table = benchmarks()
    if list_ or not names:
        rows = [("benchmark", "plugin", "summary")]
        rows += [(b.name, b.plugin, b.summary) for b in sorted(table.values(), key=lambda b: b.name)]
        _table(rows)
        if not names:
            return
    for name in names:
        if name not in table:
            raise ConfigError(f"unknown benchmark {name!r}; known benchmarks are {one_of(table)} "
                              f"(slimkit bench --list)")
    for name in names:
        path = Path(json_path) if (json_path and len(names) == 1) else (
            Path(json_path).parent / f"{name}.json" if json_path else Path("bench-results") / f"{name}.json")
        click.echo(f"== {name}: {table[name].summary}", err=True)
        result = run_benchmark(table[name], path, quick=quick, threads=threads, seed=seed)
        if quick and result.get("goals"):
            click.echo(f"  {QUICK_NOTE}: the figures below are not the benchmark's result")
        for g in result.get("goals", []):
            click.echo(f"  {goal_line(g)}")
        click.echo(f"  wrote {path} and {result['plot']}")


DEMOS: tuple[tuple[tuple[str, ...], list[str], str], ...] = (
    (("stream",), ["--seconds", "8"], "online TSM on the built-in synthetic stream"),
    (("nlp", "demo"), [], "SpAtten token pruning on all-MiniLM-L6-v2 over Shakespeare"),
)


@cli.command()
@click.pass_context
def demo(ctx) -> None:
    """Run the built-in demos (the README's quick start)."""
    ran = 0
    for path, args, what in DEMOS:
        cmd: Any = cli
        for part in path:
            cmd = getattr(cmd, "commands", {}).get(part)
            if cmd is None:
                break
        name = " ".join(path)
        if cmd is None:
            click.echo(f"== slimkit {name}: not available (its plugin is not installed; see slimkit plugins)")
            continue
        click.echo(f"== slimkit {name} {' '.join(args)}: {what}")
        cmd.main(args=list(args), prog_name=f"slimkit {name}", standalone_mode=False)
        ran += 1
    if not ran:
        from .registry import install_command

        raise click.ClickException(f"no demo is available: {install_command('all')}")


from .convert import convert_command  # noqa: E402  (click and the standard library only)

cli.add_command(convert_command)


def _table(rows) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            click.echo("  ".join("-" * w for w in widths))


COMMAND_PLUGIN: dict[str, str] = {}   # top-level plugin command -> the plugin that added it


def _load_plugin_commands() -> None:
    """Let every loaded plugin add its commands to ``cli``.

    Failures are isolated by the host, as for every other hook (:meth:`slimkit.host.Host.call_isolated`):
    a plugin whose hook raises is marked unavailable and the top-level commands it added are removed.
    """
    pm = HOST.ensure_loaded()
    for impl in reversed(pm.hook.register_commands.get_hookimpls()):
        before = dict(cli.commands)
        if HOST.call_isolated(impl, "register_commands", cli):
            COMMAND_PLUGIN.update({name: impl.plugin_name for name, cmd in cli.commands.items()
                                   if before.get(name) is not cmd})
        else:
            cli.commands.clear()
            cli.commands.update(before)


# -- the command index: `slimkit --help` without importing the plugins' command modules ----------------
def is_core_command(cmd: click.Command) -> bool:
    """Whether ``cmd`` is one of slimkit's own commands (defined in this module), not a plugin's."""
    return getattr(cmd.callback, "__module__", None) in (__name__, "slimkit.convert")


def command_index_path() -> Path:
    """Where the index of plugin commands lives (``$SLIMKIT_CACHE``, default ``~/.cache/slimkit``)."""
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit")) / "cli-commands.json"


def _source_files(entry_point_value: str) -> list[str]:
    """The ``.py`` files of the package behind an entry point (found without importing it)."""
    import importlib.util

    top = entry_point_value.split(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        files = []
        for root in spec.submodule_search_locations:
            for folder, dirs, names in os.walk(root):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
        return sorted(files)
    return [spec.origin] if spec.origin else []


def plugin_fingerprint() -> str:
    """A digest of what decides the plugins' commands: slimkit's version, the installed plugins and
    their versions, their source files (name, size, mtime), which of the built-in plugins' dependencies
    are missing, and ``SLIMKIT_LOAD_PLUGINS``."""
    import importlib.metadata

    from .host import _missing_imports
    from .registry import registry

    h = hashlib.sha256(f"{__version__}|{os.environ.get(ENV_VAR)}".encode())
    for name, entry in sorted(registry().plugins.items()):
        h.update(f"|{name} misses {_missing_imports(entry.requires)}".encode())
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for ep in sorted(eps, key=lambda e: (e.name, e.value)):
        dist = f"{ep.dist.name}=={ep.dist.version}" if ep.dist else ""
        h.update(f"|{ep.name}={ep.value}@{dist}".encode())
        for path in _source_files(ep.value):
            try:
                st = os.stat(path)
            except OSError:
                continue
            h.update(f"|{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def plugin_commands() -> dict[str, dict]:
    """``{name: {"help", "short_help"}}`` of the top-level commands the loaded plugins added."""
    return {name: {"help": cmd.help, "short_help": cmd.short_help} for name, cmd in cli.commands.items()
            if not is_core_command(cmd) and not isinstance(cmd, _IndexedCommand)}


def save_command_index() -> None:
    """Remember the plugins' commands for the next ``slimkit --help`` (best effort: a read-only cache is fine)."""
    data = {"fingerprint": plugin_fingerprint(), "commands": plugin_commands()}
    path = command_index_path()
    try:
        if path.exists() and json.loads(path.read_text()) == data:
            return
        from .io import atomic_write_json

        atomic_write_json(path, data)
    except (OSError, ValueError):
        pass


def read_command_index() -> dict[str, dict] | None:
    """The indexed commands (as :func:`plugin_commands`), or ``None`` when there is none or it is out of date."""
    try:
        data = json.loads(command_index_path().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != plugin_fingerprint():
        return None
    commands = data.get("commands")
    return commands if isinstance(commands, dict) else None


class _IndexedCommand(click.Command):
    """A plugin command known from the index: enough for ``slimkit --help``; running it loads the real one."""

    def invoke(self, ctx):
        _load_plugin_commands()
        real = cli.commands.get(self.name)
        if real is None or isinstance(real, _IndexedCommand):
            raise click.ClickException(f"command {self.name!r} is no longer provided by any plugin; "
                                       f"see slimkit plugins")
        return real.main(args=list(ctx.args), prog_name=ctx.command_path, standalone_mode=False)


def _add_indexed_commands(index: dict[str, dict]) -> None:
    """Add a stand-in for each indexed command: ``slimkit --help`` shows it exactly as the real one."""
    for name, texts in index.items():
        if name not in cli.commands and isinstance(texts, dict):
            cli.add_command(_IndexedCommand(name, help=texts.get("help"), short_help=texts.get("short_help"),
                                            add_help_option=False,
                                            context_settings={"ignore_unknown_options": True,
                                                              "allow_extra_args": True}))


def only_top_level_help(args: list[str]) -> bool:
    """True for ``slimkit``, ``slimkit --help`` and ``slimkit --version`` (no command runs)."""
    return all(a in ("--help", "--version", "--quiet", "-q") for a in args)


def _warn_about_unmatched_plugin_selection() -> None:
    """The ``SLIMKIT_LOAD_PLUGINS`` warning of the host, for the help path that loads no plugin."""
    import importlib.metadata
    import warnings

    from .host import PluginSelectionWarning, _allowed, unmatched_selection_warning

    allowed = _allowed()
    if allowed is not None:
        names = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        sentence = unmatched_selection_warning(allowed, names)
        if sentence is not None:
            warnings.warn(PluginSelectionWarning(sentence))


def prepare_commands(args: list[str]) -> None:
    """Load the plugins' commands, or, for top-level help only, take them from an up-to-date index."""
    if only_top_level_help(args):
        index = read_command_index()
        if index is not None:
            _warn_about_unmatched_plugin_selection()
            _add_indexed_commands(index)
            return
    _load_plugin_commands()
    save_command_index()


def one_line_warnings() -> None:
    """Show slimkit's own warnings as ``Warning: sentence`` (not Python's file and source line)."""
    import warnings

    default = warnings.formatwarning
    if getattr(default, "slimkit_one_line", False):
        return

    def formatwarning(message, category, filename, lineno, line=None):
        if category.__module__.split(".")[0] in ("slimkit", "slimkit_video", "slimkit_nlp"):
            return f"Warning: {message}\n"
        return default(message, category, filename, lineno, line)

    formatwarning.slimkit_one_line = True  # type: ignore[attr-defined]
    warnings.formatwarning = formatwarning


# -- the README's command table ----------------------------------------------------------------------
def _usage(cmd: click.Command, path: str) -> str:
    args = [p.make_metavar(click.Context(cmd)) for p in cmd.params if isinstance(p, click.Argument)]
    return " ".join([path, *args])


def _walk(cmd: click.Command, path: str):
    """``(usage, short help)`` of ``cmd`` and, for groups, of every sub-command, in order."""
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], f"{path} {name}")
        return
    yield _usage(cmd, path), cmd.get_short_help_str(limit=200)


def command_table_markdown() -> str:
    """The README's command table, generated from the CLI itself: slimkit's own commands and those of
    the built-in plugins (a third-party plugin installed here does not change it)."""
    from .registry import registry

    _load_plugin_commands()
    builtin = set(registry().plugins)
    lines = ["| command | plugin | what it does |", "| --- | --- | --- |"]
    for name in sorted(cli.commands):
        plugin = COMMAND_PLUGIN.get(name, "core")
        if plugin != "core" and plugin not in builtin:
            continue
        for usage, help_ in _walk(cli.commands[name], f"slimkit {name}"):
            lines.append(f"| `{usage}` | {plugin} | {help_.replace('|', '/')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    one_line_warnings()
    prepare_commands(args)
    try:
        cli.main(args=args, prog_name="slimkit", standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
