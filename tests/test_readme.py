"""The README stays true: generated technique table, quick start, and the plugin example works."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import slimkit
from slimkit.host import HOST
from slimkit.registry import technique_table_markdown

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_technique_table_is_generated_from_registry():
    block = README.split("<!-- techniques:start -->")[1].split("<!-- techniques:end -->")[0].strip()
    assert block == technique_table_markdown(), "README table drifted: run python scripts/update_readme.py"


def test_quick_start_commands_match_ci():
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README and "make demo" in README
    makefile = (REPO / "Makefile").read_text()
    # torch's CPU wheel is installed before the project, so nothing pulls a CUDA build
    assert makefile.index("torch==2.13.0") < makefile.index("-e '.[all,test]'")


def test_readme_plugin_example_is_a_working_plugin(tmp_path, monkeypatch):
    code = re.search(r"```python\n# my_slimkit_plugin\.py\n(.*?)```", README, re.S).group(1)
    toml = re.search(r"```toml\n(# pyproject\.toml of the plugin.*?)```", README, re.S).group(1)
    group, ep = re.search(r'\[project\.entry-points\."(.+?)"\]\n(\S+) = "(\S+)"', toml).group(1, 2)
    assert group == "slimkit.plugins"
    (tmp_path / "my_slimkit_plugin.py").write_text(code)
    info = tmp_path / "my_slimkit_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-slimkit-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{ep} = my_slimkit_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        HOST.load()
        import torch

        assert slimkit.techniques()["int8-weights"].plugin == ep
        model = torch.nn.Sequential(torch.nn.Linear(8, 4))
        w = model[0].weight.detach().clone()
        out = slimkit.apply(model, "int8-weights")
        err = (out[0].weight - w).abs().max().item()
        assert 0 < err <= w.abs().max().item() / 127 * 0.51
    finally:
        monkeypatch.undo()
        sys.modules.pop("my_slimkit_plugin", None)
        HOST.load()
