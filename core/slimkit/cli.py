"""The ``slimkit`` command line: plugins, techniques, bench, and plugin commands."""
from __future__ import annotations

import json
import sys

import click

from . import __version__
from .errors import SlimkitError
from .host import HOST


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
def cli() -> None:
    """slimkit: make video and NLP models fast enough for phones, cameras and laptops."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """Installed and known plugins, their state and techniques."""
    infos = HOST.plugin_infos()
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
    out = []
    for name in sorted(set(table) | set(reg.techniques)):
        t, e = table.get(name), reg.techniques.get(name)
        plugin = t.plugin if t else e.plugin
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
    rows = [("technique", "plugin", "state", "summary")]
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

    from .bench import benchmarks, run_benchmark
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
        for g in result.get("goals", []):
            mark = "PASS" if g["passed"] else "MISS"
            op = ">=" if g.get("higher_is_better", True) else "<="
            click.echo(f"  [{mark}] {g['name']}: {g['value']:.4g}{g.get('unit', '')} (goal {op} {g['target']:.4g})")
        click.echo(f"  wrote {path} and {result['plot']}")


DEMOS = (
    (("stream",), ["--seconds", "8"], "online TSM on the built-in synthetic stream"),
    (("nlp", "demo"), [], "SpAtten token pruning on all-MiniLM-L6-v2 over Shakespeare"),
)


@cli.command()
@click.pass_context
def demo(ctx) -> None:
    """Run the built-in demos (the README's quick start)."""
    ran = 0
    for path, args, what in DEMOS:
        cmd = cli
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
        raise click.ClickException("no demo is available: pip install 'slimkit[all]'")


def _table(rows) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            click.echo("  ".join("-" * w for w in widths))


def _load_plugin_commands() -> None:
    pm = HOST.ensure_loaded()
    for impl in reversed(pm.hook.register_commands.get_hookimpls()):
        try:
            impl.function(cli)
        except Exception as e:  # a broken plugin must not break the CLI
            info = HOST.infos.get(impl.plugin_name)
            if info is not None:
                info.available = False
                info.reason = f"register_commands failed: {type(e).__name__}: {e}"


def main(argv=None) -> int:
    _load_plugin_commands()
    try:
        cli.main(args=argv, prog_name="slimkit", standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
