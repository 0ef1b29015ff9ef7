"""The peer virtualenv in which the LLM KV-cache benchmarks run.

kvpress 0.5.5 (NVIDIA's KV-cache compression presses) pins ``transformers<5.3``, while slimkit's
main environment may carry a newer transformers. So that every method (dense, kvpress presses,
transformers' quantized caches, SpAtten, progressive quantization) is timed side by side in ONE
process, the LLM benchmarks run inside a dedicated virtualenv,
``$SLIMKIT_CACHE/venvs/llm-peers`` (default ``~/.cache/slimkit/venvs/llm-peers``), which holds
torch 2.13.0 (CPU wheel), transformers 5.2.x, kvpress 0.5.5, optimum-quanto, hqq, gguf,
accelerate and slimkit itself as an editable install of this checkout (so it always runs the
current code). A peer that cannot be installed is an error naming what failed, never a silent skip.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from slimkit.errors import SlimkitError
from slimkit.io import atomic_write_text

TORCH = "torch==2.13.0"
PEER_REQUIREMENTS = (
    "transformers>=5.2,<5.3",
    "kvpress==0.5.5",
    "optimum-quanto",
    "hqq",
    "gguf",
    "accelerate",
)
PEER_MODULES = ("kvpress", "optimum.quanto", "hqq")
STAMP = ".slimkit-peers.json"


def _cache_root() -> Path:
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))


def peer_env_dir() -> Path:
    """Where the peer virtualenv lives (it may not exist yet)."""
    return _cache_root() / "venvs" / "llm-peers"


def peer_python(venv: Path | None = None) -> Path:
    return (venv or peer_env_dir()) / "bin" / "python"


def repo_root() -> Path:
    """The slimkit checkout this package was loaded from (holds pyproject.toml)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "core" / "slimkit").is_dir():
            return parent
    raise SlimkitError(
        f"cannot find the slimkit checkout above {here} (no pyproject.toml beside core/slimkit); "
        "the LLM benchmarks need a source checkout so that the peer virtualenv can install slimkit editable")


def installed_version(dist: str) -> str | None:
    """The installed version of the distribution ``dist`` in this interpreter, None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def peer_env_ready() -> bool:
    """True when THIS interpreter can run every peer: kvpress, optimum-quanto and hqq import and
    transformers is older than 5.3 (what kvpress 0.5.5 requires)."""
    tv = installed_version("transformers")
    if tv is None or _version_tuple(tv) >= (5, 3):
        return False
    for mod in PEER_MODULES:
        try:
            if importlib.util.find_spec(mod.split(".")[0]) is None:
                return False
            importlib.import_module(mod)
        except Exception:
            return False
    return True


def _run(cmd: list[str], what: str, progress: Callable[[str], None], cwd: Path | None = None) -> None:
    progress(f"  {what}")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-8:]
        raise SlimkitError(
            f"could not build the LLM peer virtualenv: {what} failed ({' '.join(cmd)}): " + " | ".join(tail))


def _read_stamp(venv: Path) -> dict:
    try:
        return json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _pyproject_hash(root: Path) -> str:
    return hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()[:16]


def _stamp_ok(venv: Path, root: Path) -> bool:
    data = _read_stamp(venv)
    return (peer_python(venv).exists() and data.get("requirements") == [TORCH, *PEER_REQUIREMENTS]
            and data.get("repo") == str(root))


def ensure_peer_env(progress: Callable[[str], None] = print, force: bool = False) -> Path:
    """Create (once) the peer virtualenv and return its folder.

    Installs torch 2.13.0 first (the CPU wheel; a bare torch requirement pulls CUDA), then
    transformers 5.2.x, kvpress 0.5.5, optimum-quanto, hqq, gguf, accelerate and an editable
    slimkit[nlp] from this checkout, checks that they import, and writes a stamp file with the
    installed versions. Raises ``SlimkitError`` naming the step that failed.
    """
    venv = peer_env_dir()
    root = repo_root()
    if not force and _stamp_ok(venv, root):
        data = _read_stamp(venv)
        if data.get("pyproject") != _pyproject_hash(root):
            # slimkit's own dependencies or plugin entry points changed: refresh the editable install only
            py = str(peer_python(venv))
            _run([py, "-m", "pip", "install", "-q", *PEER_REQUIREMENTS, "-e", f"{root}[nlp]"],
                 f"pip install -e {root}[nlp] (pyproject.toml changed)", progress)
            data["pyproject"] = _pyproject_hash(root)
            atomic_write_text(venv / STAMP, json.dumps(data, indent=1))
        return venv
    t0 = time.time()
    progress(f"building the LLM peer virtualenv in {venv} (once; a few minutes)")
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    _run([base, "-m", "venv", str(venv)], "python -m venv", progress)
    py = str(peer_python(venv))
    pip = [py, "-m", "pip", "install", "-q"]
    _run(pip + ["--upgrade", "pip"], "pip install --upgrade pip", progress)
    _run(pip + [TORCH], f"pip install {TORCH}", progress)
    _run(pip + [*PEER_REQUIREMENTS, "-e", f"{root}[nlp]"],
         f"pip install {' '.join(PEER_REQUIREMENTS)} -e {root}[nlp]", progress)
    check = ("import json, importlib.metadata as m, kvpress, optimum.quanto, hqq, gguf, slimkit, slimkit_nlp; "
             "print(json.dumps({p: m.version(p) for p in ['torch','transformers','kvpress','optimum-quanto',"
             "'hqq','gguf','accelerate']}))")
    res = subprocess.run([py, "-c", check], capture_output=True, text=True)
    if res.returncode != 0:
        raise SlimkitError(
            f"the LLM peer virtualenv in {venv} was installed but its packages do not import: "
            + " | ".join(res.stderr.strip().splitlines()[-5:]))
    versions = json.loads(res.stdout.strip().splitlines()[-1])
    atomic_write_text(venv / STAMP, json.dumps({
        "requirements": [TORCH, *PEER_REQUIREMENTS], "repo": str(root), "pyproject": _pyproject_hash(root),
        "versions": versions,
        "built_s": round(time.time() - t0, 1)}, indent=1))
    progress(f"LLM peer virtualenv ready in {time.time() - t0:.0f} s: "
             + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return venv


def peer_versions() -> dict:
    """Versions recorded in the peer virtualenv's stamp file ({} if it is not built)."""
    try:
        return json.loads((peer_env_dir() / STAMP).read_text()).get("versions", {})
    except (OSError, ValueError):
        return {}


def why_peer() -> str:
    """One line: why the benchmark cannot run in this interpreter."""
    tv = installed_version("transformers") or "none"
    missing = [m for m in PEER_MODULES if importlib.util.find_spec(m.split(".")[0]) is None]
    if tv != "none" and _version_tuple(tv) >= (5, 3):
        return f"kvpress 0.5.5 requires transformers<5.3 (this venv has {tv})"
    if missing:
        return f"this venv lacks {', '.join(missing)}"
    return "the peers do not import in this venv"


def rerun_in_peer_env(argv: list[str], progress: Callable[[str], None] = print) -> int:
    """Run ``python -m slimkit.cli <argv>`` in the peer virtualenv (building it first if needed),
    streaming its output; returns its exit code."""
    reason = why_peer()
    venv = ensure_peer_env(progress)
    progress(f"{reason}: running the benchmark in {venv}")
    env = dict(os.environ)
    env["SLIMKIT_IN_PEER_ENV"] = "1"
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(peer_python(venv)), "-m", "slimkit.cli", *argv], env=env)
    return proc.returncode


# ------------------------------------------------------------------ the LLM benchmarks' shared plumbing
PROMPTS_ENV = "SLIMKIT_BENCH_PROMPTS"
_RUNNER_KEYS = ("benchmark", "summary", "slimkit_version", "torch_version", "machine", "quick", "seconds", "plot")


def prompt_count(ctx, default: int = 40, quick: int = 4) -> int:
    """Prompts an LLM benchmark measures: ``$SLIMKIT_BENCH_PROMPTS``, else ``quick`` under ``--quick``,
    else ``default``; a value that is not a positive integer is refused with an example."""
    import os

    from slimkit.errors import SlimkitError

    raw = os.environ.get(PROMPTS_ENV)
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise SlimkitError(f"{PROMPTS_ENV} must be a positive number of prompts, got {raw!r}; e.g. {PROMPTS_ENV}=4")
        return n
    return quick if ctx.quick else default


BUDGETS_ENV = "SLIMKIT_BENCH_BUDGETS"
PRESSES_ENV = "SLIMKIT_BENCH_PRESSES"


def chosen_budgets(default: tuple[float, ...]) -> tuple[float, ...]:
    """KV budgets to measure: ``$SLIMKIT_BENCH_BUDGETS`` (comma-separated shares in (0, 1]), else ``default``."""
    import os

    from slimkit.errors import SlimkitError

    raw = os.environ.get(BUDGETS_ENV)
    if not raw:
        return tuple(default)
    try:
        budgets = tuple(float(x) for x in raw.split(",") if x.strip())
    except ValueError:
        budgets = ()
    if not budgets or any(not 0.0 < b <= 1.0 for b in budgets):
        raise SlimkitError(f"{BUDGETS_ENV} must be comma-separated KV shares in (0, 1], got {raw!r}; "
                           f"e.g. {BUDGETS_ENV}=0.5,0.25")
    return budgets


def chosen_presses(default: tuple[str, ...]) -> tuple[str, ...]:
    """kvpress presses to run: ``$SLIMKIT_BENCH_PRESSES`` (comma-separated, ``SnapKV`` or ``SnapKVPress``),
    else ``default``; a name that is not among ``default`` is refused with the list."""
    import os

    from slimkit.errors import SlimkitError

    raw = os.environ.get(PRESSES_ENV)
    if not raw:
        return tuple(default)
    chosen = []
    for name in (x.strip() for x in raw.split(",") if x.strip()):
        full = name if name.endswith("Press") else name + "Press"
        if full not in default:
            raise SlimkitError(f"{PRESSES_ENV}: unknown press {name!r}; choose from {', '.join(default)}")
        chosen.append(full)
    if not chosen:
        raise SlimkitError(f"{PRESSES_ENV} names no press; e.g. {PRESSES_ENV}=SnapKV,ObservedAttention")
    return tuple(chosen)


def rerun_benchmark_in_peer_env(name: str, ctx, n_prompts: int) -> dict:
    """Run ``slimkit bench NAME`` in the LLM peer virtualenv (same threads, seed, quick and prompt count)
    and return its result, with ``ran_in`` saying where and why; ``SlimkitError`` if it fails."""
    import json
    import os
    import tempfile

    from slimkit.errors import SlimkitError

    reason = why_peer()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        argv = ["bench", name, "--json", str(out), "--threads", str(ctx.threads), "--seed", str(ctx.seed)]
        if ctx.quick:
            argv.append("--quick")
        os.environ.setdefault(PROMPTS_ENV, str(n_prompts))
        rc = rerun_in_peer_env(argv)
        if rc != 0 or not out.exists():
            raise SlimkitError(f"{name} failed in the LLM peer virtualenv {peer_env_dir()} (exit code {rc}); "
                               f"see its output above")
        data = json.loads(out.read_text())
    for k in _RUNNER_KEYS:
        data.pop(k, None)
    data["ran_in"] = {"env": str(peer_env_dir()), "why": reason, "versions": peer_versions()}
    return data
