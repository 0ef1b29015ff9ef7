"""The README stays true: generated technique and command tables, quick start, the plugin example works,
and the claims the README makes about the command line, install hints, benchmarks and HF loading.

Every bash and python block of the READMEs runs in tests/test_docs.py.
"""
from __future__ import annotations

import os
import re
import subprocess
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


def test_command_table_is_generated_from_the_cli():
    from slimkit.cli import command_table_markdown

    block = README.split("<!-- commands:start -->")[1].split("<!-- commands:end -->")[0].strip()
    assert block == command_table_markdown(), "README command table drifted: run python scripts/update_readme.py"
    for command in ("video train", "nlp train", "nlp demo", "nlp fetch-corpus", "hat search", "hat export"):
        assert f"`slimkit {command}" in block


def test_update_readme_check_passes():
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "update_readme.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, "README tables drifted: run python scripts/update_readme.py"


def test_help_starts_without_importing_torch(tmp_path):
    """`slimkit --help` lists the plugins' commands from the index, without torch (under 1 s on a quiet box)."""
    env = {**os.environ, "SLIMKIT_CACHE": str(tmp_path)}
    first = subprocess.run([sys.executable, "-m", "slimkit.cli", "--help"], capture_output=True, text=True, env=env)
    assert first.returncode == 0 and (tmp_path / "cli-commands.json").exists()
    code = ("import sys, time\nt = time.perf_counter()\nfrom slimkit.cli import main\nrc = main(['--help'])\n"
            "print('SECONDS', time.perf_counter() - t)\n"
            "print('HEAVY', [m for m in ('torch', 'transformers', 'numpy', 'slimkit_video.train') if m in sys.modules])\n"
            "sys.exit(rc)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout, res.stdout
    for command in ("video", "stream", "nlp", "hat", "bench", "plugins"):
        assert f"  {command} " in res.stdout
    assert res.stdout.split("Commands:")[1].split("SECONDS")[0] == first.stdout.split("Commands:")[1]


def test_install_hints_name_where_this_slimkit_came_from():
    from slimkit.registry import install_command, registry

    hint = install_command("video")
    assert hint.startswith("pip install") and "[video]" in hint
    assert "'slimkit[video]'" not in hint, "slimkit is not on the package index: the hint must name the checkout"
    assert registry().plugins["nlp"].install_hint == install_command("nlp")
    assert "not on the package index" in README and "pip install '.[video]'" in README


def test_load_plugins_warns_about_names_no_plugin_has(monkeypatch):
    import warnings

    from slimkit.host import PluginSelectionWarning

    monkeypatch.setenv("SLIMKIT_LOAD_PLUGINS", "video,my-plugin")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            HOST._warned.clear()
            HOST.load()
        sentences = [str(w.message) for w in caught if issubclass(w.category, PluginSelectionWarning)]
        assert len(sentences) == 1 and "'my-plugin'" in sentences[0] and "'video'" in sentences[0]
    finally:
        monkeypatch.undo()
        HOST.load()


def test_quick_runs_report_goals_without_judging_them(tmp_path):
    from slimkit.bench import Benchmark, goal, run_benchmark

    def run_it(ctx):
        return {"settings": {"size": 8}, "goals": [goal("speed-up", 0.5, 1.5), goal("exact", 0.0, 1e-6, False, valid_when_quick=True)]}

    quick = run_benchmark(Benchmark("toy", run_it), tmp_path / "toy.json", quick=True, show_progress=False)
    assert quick["quick"] is True and "quick" in quick["quick_note"]
    assert [g["passed"] for g in quick["goals"]] == [None, True]
    full = run_benchmark(Benchmark("toy", run_it), tmp_path / "full.json", show_progress=False)
    assert [g["passed"] for g in full["goals"]] == [False, True]
    from slimkit.bench import plot_header

    assert "toy" in plot_header(quick) and "size=8" in plot_header(quick) and "QUICK RUN" in plot_header(quick)
    assert "QUICK" not in plot_header(full) and "1 torch thread(s)" in plot_header(full)


def test_hf_auto_classes_know_slimkit_models_after_import_slimkit_nlp(tmp_path):
    """A saved Lite Transformer loads through AutoModelForCausalLM after `import slimkit_nlp`, no remote code."""
    from slimkit_nlp.lsra import LiteTransformerConfig, LiteTransformerForCausalLM

    cfg = LiteTransformerConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                conv_heads=2)
    assert (cfg.d_model, cfg.decoder_layers, cfg.n_head, len(cfg.layer_types)) == (32, 2, 2, 2)
    assert cfg.bos_token_id == cfg.eos_token_id == 63
    LiteTransformerForCausalLM(cfg).save_pretrained(tmp_path / "lite")
    code = ("import sys, slimkit_nlp\nassert 'torch' not in sys.modules\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'lite')!r})\nprint(type(m).__name__)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith("LiteTransformerForCausalLM")


def test_progress_bars_on_a_terminal_lines_in_a_log_nothing_under_quiet(monkeypatch):
    import io

    from click.testing import CliRunner

    from slimkit import progress
    from slimkit.cli import cli

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("SLIMKIT_QUIET", "")
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress.show_progress() and not progress.bar(range(3)).disable
    monkeypatch.setenv("SLIMKIT_QUIET", "1")
    assert not progress.show_progress() and progress.bar(range(3)).disable
    monkeypatch.setenv("SLIMKIT_QUIET", "")
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)                         # a log file, a pipe, CI
    assert not progress.show_progress() and progress.log_progress()
    assert list(progress.bar(range(3), desc="short")) == [0, 1, 2] and log.getvalue() == ""   # under the delay
    monkeypatch.setattr(progress, "LOG_DELAY_S", 0.0)               # a loop that runs long: plain lines
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    assert list(progress.bar(range(3), desc="long")) == [0, 1, 2]
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines and all(line.startswith("long:") for line in lines)
    assert "3/3" in lines[-1]                                       # the last line is the finished count
    assert list(progress.bar(range(2), desc="paced", mininterval=1.0, leave=False)) == [0, 1]  # callers' pacing
    monkeypatch.setenv("SLIMKIT_QUIET", "1")
    assert not progress.log_progress() and progress.bar(range(3)).disable
    monkeypatch.setenv("SLIMKIT_QUIET", "")
    assert CliRunner().invoke(cli, ["--quiet", "techniques"]).exit_code == 0
    assert os.environ["SLIMKIT_QUIET"] == "1"                       # `slimkit --quiet` reaches every bar
