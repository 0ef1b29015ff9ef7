"""Packaging: one wheel with three import packages and the catalogue; the base install stands alone."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

VIDEO_NLP_ONLY = ["transformers", "decord", "av", "cv2", "accelerate", "datasets", "yaml", "onnx", "onnxruntime"]


def test_wheel_layout_and_registry(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("slimkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"slimkit", "slimkit_video", "slimkit_nlp"}, "never a top-level core or plugins module"
    assert "slimkit/registry.toml" in names
    for shipped in ("gpt2-shakespeare/model.safetensors", "minilm-spatten/deltas.safetensors",
                    "minilm-spatten/slimkit_config.json"):                     # models the project trained
        assert f"slimkit_nlp/assets/{shipped}" in names, shipped
    assert "slimkit_nlp/pq/native.c" in names, "pq's decode kernels are built from the installed source"
    meta = zipfile.ZipFile(wheel)
    eps = meta.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[slimkit.plugins]" in eps and "video = slimkit_video.plugin" in eps and "nlp = slimkit_nlp.plugin" in eps
    requires = [line for line in meta.read(next(n for n in names if n.endswith("METADATA"))).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    for dep in ("transformers", "decord", "datasets", "av", "opencv"):
        assert not any(dep in r for r in base), f"{dep} must not be a base dependency"
    for extra in ("video", "nlp", "all", "test", "export"):
        assert any(f"extra == '{extra}'" in r for r in requires)


def test_base_install_works_without_video_and_nlp_dependencies():
    """Block every extra-only dependency: the host and the CLI still work and give install hints."""
    code = (
        "import sys\n"
        f"for m in {VIDEO_NLP_ONLY!r}: sys.modules[m] = None\n"
        "import slimkit\n"
        "from slimkit.cli import main\n"
        "infos = {i.name: i for i in slimkit.plugins()}\n"
        "assert infos['video'].reason.startswith('missing dependency'), infos['video'].reason\n"
        "from slimkit.registry import install_command\n"
        "assert infos['nlp'].reason.endswith(install_command('nlp')), infos['nlp'].reason\n"
        "assert slimkit.techniques() == {}\n"
        "sys.exit(main(['plugins']))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    from slimkit.registry import install_command

    assert install_command("video") in res.stdout and install_command("nlp") in res.stdout


def test_importing_slimkit_is_light():
    code = "import sys, slimkit; print(','.join(m for m in ('transformers', 'decord', 'slimkit_video') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""


def test_listing_plugins_techniques_benchmarks_and_commands_stays_light():
    """`slimkit plugins` and the CLI start without importing the heavy extras (lazy registration)."""
    code = (
        "import sys, slimkit, slimkit.bench\n"
        "from slimkit.cli import _load_plugin_commands\n"
        "slimkit.techniques(); slimkit.plugins(); slimkit.bench.benchmarks(); slimkit.models(); slimkit.sources()\n"
        "_load_plugin_commands()\n"
        "print(','.join(m for m in ('transformers', 'decord', 'accelerate', 'datasets', 'av', 'cv2') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""
