"""The catalogue in ``registry.toml``: plugins, their extras and techniques.

Shipped inside the wheel as ``slimkit/registry.toml`` and read with
``importlib.resources``; in a source checkout the top-level file is used.
"""
from __future__ import annotations

import functools
import importlib.resources
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PluginEntry:
    name: str
    module: str
    extra: str
    requires: tuple[str, ...]
    summary: str = ""

    @property
    def install_hint(self) -> str:
        return f"pip install 'slimkit[{self.extra}]'"


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
        lines.append(f"| `{t.name}` | {t.plugin} | `slimkit[{extra}]` | {t.summary} | {paper} |")
    return "\n".join(lines)
