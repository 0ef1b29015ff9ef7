"""Regenerate the README's generated tables (a test fails when they drift):

- the technique table, from registry.toml (``slimkit.registry.technique_table_markdown``);
- the command table, from the ``slimkit`` command line itself (``slimkit.cli.command_table_markdown``).

    python scripts/update_readme.py          # rewrite README.md
    python scripts/update_readme.py --check  # exit 1 if README.md is out of date
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- techniques:start -->", "<!-- techniques:end -->"
COMMANDS_START, COMMANDS_END = "<!-- commands:start -->", "<!-- commands:end -->"


def render(text: str, table: str, start: str = START, end: str = END) -> str:
    """``text`` with the block between ``start`` and ``end`` replaced by ``table``."""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {start} ... {end} block; add the two markers where the table goes")
    return pattern.sub(lambda _: f"{start}\n{table}\n{end}", text)


def generated_tables() -> list[tuple[str, str, str]]:
    """``(start, end, table)`` of every generated block."""
    from slimkit.cli import command_table_markdown
    from slimkit.registry import technique_table_markdown

    return [(START, END, technique_table_markdown()), (COMMANDS_START, COMMANDS_END, command_table_markdown())]


def main() -> int:
    text = README.read_text()
    new = text
    for start, end, table in generated_tables():
        new = render(new, table, start, end)
    if "--check" in sys.argv:
        return 0 if new == text else 1
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
