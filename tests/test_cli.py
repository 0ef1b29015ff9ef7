"""The slimkit command line: plugins, techniques, bench, errors without tracebacks."""
from __future__ import annotations

import json
import subprocess
import sys

import slimkit
from slimkit.bench import goal


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "slimkit.cli", *args], capture_output=True, text=True, env=env)


def test_version_and_plugins_table():
    res = run("--version")
    assert res.returncode == 0 and slimkit.__version__ in res.stdout
    res = run("plugins")
    assert res.returncode == 0
    assert "video" in res.stdout and "nlp" in res.stdout and "available" in res.stdout


def test_plugins_json_shows_state_and_reason():
    import os

    rows = {r["name"]: r for r in json.loads(run("plugins", "--json").stdout)}
    assert rows["video"]["available"] and rows["nlp"]["available"]
    env = {**os.environ, "SLIMKIT_LOAD_PLUGINS": "nlp"}
    rows = {r["name"]: r for r in json.loads(run("plugins", "--json", env=env).stdout)}
    assert not rows["video"]["available"] and "SLIMKIT_LOAD_PLUGINS" in rows["video"]["reason"]


def test_techniques_json_lists_registry_entries():
    from slimkit.registry import registry

    rows = {r["name"]: r for r in json.loads(run("techniques", "--json").stdout)}
    assert set(rows) == set(registry().techniques) | set(slimkit.techniques())
    for name, r in rows.items():
        assert r["installed"] and r["summary"] and r["paper"]["arxiv"]


def test_unknown_benchmark_is_one_clear_line():
    res = run("bench", "no-such-bench")
    assert res.returncode == 2
    assert "Error: unknown benchmark 'no-such-bench'; known benchmarks are" in res.stderr
    assert "Traceback" not in res.stderr


def test_bench_writes_json_and_png(tmp_path):
    from click.testing import CliRunner

    from slimkit.cli import cli

    class P:
        @slimkit.hookimpl
        def register_benchmarks(self, register):
            def run_it(ctx):
                lat = ctx.latency(lambda: sum(range(1000)))
                return {"latency": lat, "goals": [goal("speed-up", 2.0, 1.5)]}
            register(slimkit.Benchmark("toy-bench", run_it, "A toy benchmark."))

    slimkit.register_plugin(P(), "toy")
    try:
        res = CliRunner().invoke(cli, ["bench", "--list"])
        assert res.exit_code == 0 and "toy-bench" in res.output
        out = tmp_path / "toy.json"
        res = CliRunner().invoke(cli, ["bench", "toy-bench", "--quick", "--json", str(out)])
        assert res.exit_code == 0, res.output
        data = json.loads(out.read_text())
        assert data["benchmark"] == "toy-bench" and data["quick"] is True
        assert data["machine"]["threads"] == 1
        assert data["latency"]["runs"] == 5 and data["latency"]["median_ms"] > 0
        assert data["goals"][0]["passed"] is None and data["goals"][0]["judged"] is False  # quick: reported only
        assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
        assert "[----] speed-up" in res.output and "not judged" in res.output
    finally:
        slimkit.unregister_plugin("toy")
