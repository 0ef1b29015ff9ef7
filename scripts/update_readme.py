"""Regenerate the README's technique table from registry.toml (a test fails when they drift)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- techniques:start -->", "<!-- techniques:end -->"


def render(text: str, table: str) -> str:
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    return pattern.sub(f"{START}\n{table}\n{END}", text)


def main() -> int:
    from slimkit.registry import technique_table_markdown

    text = README.read_text()
    new = render(text, technique_table_markdown())
    if "--check" in sys.argv:
        return 0 if new == text else 1
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
