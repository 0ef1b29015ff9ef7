"""The catalogue in ``registry.toml``: plugins, their extras and techniques; and the install command.

Shipped inside the wheel as ``slimkit/registry.toml`` and read with
``importlib.resources``; in a source checkout the top-level file is used.

slimkit is not on the package index yet, so every install hint comes from :func:`install_command`,
which names the place this slimkit was installed from (the checkout, the git URL or the wheel).
"""
from __future__ import annotations

import functools
import importlib.resources
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

CHECKOUT = Path(__file__).resolve().parents[2]   # the clone's root when running from a source checkout


def _direct_url() -> dict | None:
    """PEP 610 ``direct_url.json`` of the installed slimkit: where pip took it from (``None``: an index or unknown)."""
    import importlib.metadata

    try:
        text = importlib.metadata.distribution("slimkit").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _local_path(url: str) -> str | None:
    """The local path of a ``file://`` URL (``None`` for any other URL)."""
    if not url.startswith("file://"):
        return None
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(url).path)


def _checkout() -> Path | None:
    """The source checkout this slimkit runs from, if it runs from one."""
    pyproject = CHECKOUT / "pyproject.toml"
    try:
        return CHECKOUT if 'name = "slimkit"' in pyproject.read_text(encoding="utf-8") else None
    except OSError:
        return None


@functools.cache
def install_command(extra: str | None = None) -> str:
    """The ``pip install`` command that adds ``extra`` to this slimkit, from where it came from.

    A checkout installed with ``pip install -e '.[video]'`` gives ``pip install -e '/path/to/slimkit[nlp]'``;
    a git install ``pip install 'slimkit[nlp] @ git+https://...'``; a wheel the same with the wheel's URL.
    Only a slimkit of unknown origin gets the package-index form ``pip install 'slimkit[nlp]'``.
    """
    suffix = f"[{extra}]" if extra else ""
    info = _direct_url()
    if info and info.get("url"):
        url, path = info["url"], _local_path(info["url"])
        if "dir_info" in info and path:
            editable = "-e " if info["dir_info"].get("editable") else ""
            return f"pip install {editable}{shlex.quote(path + suffix)}"
        if "vcs_info" in info:
            vcs = info["vcs_info"]
            rev = f"@{vcs['requested_revision']}" if vcs.get("requested_revision") else ""
            kind = vcs.get("vcs", "git")
            return f"pip install {shlex.quote(f'slimkit{suffix} @ {kind}+{url}{rev}')}"
        return f"pip install {shlex.quote(f'slimkit{suffix} @ {url}')}"
    checkout = None if info else _checkout()
    if checkout is not None:
        return f"pip install -e {shlex.quote(str(checkout) + suffix)}"
    return f"pip install {shlex.quote('slimkit' + suffix)}"


@dataclass(frozen=True)
class PluginEntry:
    name: str
    module: str
    extra: str
    requires: tuple[str, ...]
    summary: str = ""

    @property
    def install_hint(self) -> str:
        """The command that installs this plugin's extra (:func:`install_command`)."""
        return install_command(self.extra)


@dataclass(frozen=True)
class TechniqueEntry:
    name: str
    plugin: str
    summary: str
    paper_title: str
    arxiv: str
    options: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Registry:
    plugins: dict
    techniques: dict

    def techniques_of(self, plugin: str) -> set[str]:
        return {t.name for t in self.techniques.values() if t.plugin == plugin}


def registry_text() -> str:
    """The text of registry.toml (packaged copy first, then the source tree)."""
    try:
        res = importlib.resources.files("slimkit").joinpath("registry.toml")
        if res.is_file():
            return res.read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):
        pass
    src = Path(__file__).resolve().parents[2] / "registry.toml"
    return src.read_text(encoding="utf-8")


def parse_registry(text: str) -> Registry:
    data = tomllib.loads(text)
    plugins = {
        name: PluginEntry(
            name=name,
            module=p["module"],
            extra=p.get("extra", name),
            requires=tuple(p.get("requires", ())),
            summary=p.get("summary", ""),
        )
        for name, p in data.get("plugins", {}).items()
    }
    techniques = {}
    for name, t in data.get("techniques", {}).items():
        paper = t.get("paper", {})
        techniques[name] = TechniqueEntry(
            name=name,
            plugin=t["plugin"],
            summary=t["summary"],
            paper_title=paper.get("title", ""),
            arxiv=str(paper.get("arxiv", "")),
        )
    return Registry(plugins=plugins, techniques=techniques)


@functools.cache
def registry() -> Registry:
    """The parsed catalogue (cached)."""
    return parse_registry(registry_text())


def technique_table_markdown() -> str:
    """The README's technique table, generated from registry.toml."""
    reg = registry()
    lines = [
        "| technique | plugin | install | what it does | paper |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in sorted(reg.techniques.values(), key=lambda t: (t.plugin, t.name)):
        extra = reg.plugins[t.plugin].extra if t.plugin in reg.plugins else t.plugin
        paper = f"{t.paper_title} ([arXiv:{t.arxiv}](https://arxiv.org/abs/{t.arxiv}))"
        lines.append(f"| `{t.name}` | {t.plugin} | `pip install '.[{extra}]'` | {t.summary} | {paper} |")
    return "\n".join(lines)
