"""Benchmarks: registered by plugins, run by ``slimkit bench NAME``, written as JSON plus a PNG.

A benchmark's ``run(ctx) -> dict`` returns a JSON-serialisable dict. Conventions:
``goals`` is a list of :func:`goal` rows (the goals of the issue it serves); ratios are
measured side by side in the same run. If the benchmark has no ``plot(result, png_path)``,
a bar chart of its goals is drawn.

Quick runs (``--quick``) measure small inputs, so their figures cannot say whether a goal set for
the full size is met: their goals are reported with ``passed: null`` and ``judged: false`` unless the
benchmark marks a goal ``valid_when_quick=True``. Every plot gets a header line naming the benchmark,
its settings and the thread count, and saying when the run was quick.

This module imports torch only when a benchmark runs, so ``import slimkit`` stays fast.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

QUICK_NOTE = "quick run: small inputs, goals not judged"


@dataclass
class Benchmark:
    """A named benchmark: ``run(ctx) -> dict``; optional ``plot(result, png_path)``."""

    name: str
    run: Callable[["BenchContext"], dict]
    summary: str = ""
    plot: Callable[[dict, Path], None] | None = None
    plugin: str = ""


@dataclass
class BenchContext:
    """What a benchmark gets: settings, a progress bar and the latency protocol.

    ``quick`` asks for a small smoke-test version (CI); ``threads`` is fixed for
    every timing; ``out_dir`` is where extra artefacts may go; ``seed`` seeds RNGs.
    """

    quick: bool = False
    threads: int = 1
    out_dir: Path = field(default_factory=lambda: Path("bench-results"))
    seed: int = 0
    show_progress: bool = True

    def progress(self, iterable: Iterable | None = None, total: int | None = None, desc: str = ""):
        """A progress bar with a time estimate (silent under ``--quiet`` or off a terminal)."""
        from .progress import bar

        return bar(iterable, total=total, desc=desc, enabled=self.show_progress)

    def phase(self, desc: str):
        """``with ctx.phase("loading SmolLM2"):`` announces a long step without a count, then its time."""
        from .progress import step

        return step(desc, enabled=self.show_progress)

    def latency(self, fn: Callable[[], Any], warmup: int | None = None, runs: int | None = None):
        """``measure_latency`` with this run's thread count (fewer runs when quick)."""
        from .measure import measure_latency

        return measure_latency(fn, warmup=warmup if warmup is not None else (2 if self.quick else 5),
                               runs=runs if runs is not None else (5 if self.quick else 20),
                               threads=self.threads)

    def latencies(self, fns: dict, warmup: int | None = None, runs: int | None = None, desc: str = "timing") -> dict:
        """Round-robin ``measure_latency_interleaved`` of several callables: use it for ratios."""
        from .measure import measure_latency_interleaved

        return measure_latency_interleaved(
            fns, warmup=warmup if warmup is not None else (2 if self.quick else 5),
            runs=runs if runs is not None else (5 if self.quick else 20), threads=self.threads,
            progress=lambda it: self.progress(it, desc=desc))


def goal(name: str, value: float, target: float, higher_is_better: bool = True, unit: str = "",
         valid_when_quick: bool = False) -> dict:
    """One goal row for a benchmark's result.

    ``valid_when_quick``: the goal means the same on a ``--quick`` run's small inputs (a parameter count,
    an exactness check), so quick runs judge it too; other goals are only reported on quick runs.
    """
    passed = value >= target if higher_is_better else value <= target
    return {"name": name, "value": float(value), "target": float(target),
            "higher_is_better": higher_is_better, "unit": unit, "passed": bool(passed),
            "valid_when_quick": bool(valid_when_quick)}


def judge_goals(goals: list, quick: bool) -> list:
    """The goal rows as this run may judge them: on a quick run, goals not valid at its size get
    ``passed: None`` and ``judged: False`` (their values are still reported)."""
    out = []
    for g in goals:
        g = dict(g)
        judged = not quick or bool(g.get("valid_when_quick", False))
        if not judged:
            g["passed"] = None
        g["judged"] = judged
        out.append(g)
    return out


def goal_line(g: dict) -> str:
    """One goal as the command line prints it: ``[PASS]``, ``[MISS]``, or ``[----]`` when not judged."""
    mark = "----" if g.get("passed") is None else ("PASS" if g["passed"] else "MISS")
    op = ">=" if g.get("higher_is_better", True) else "<="
    line = f"[{mark}] {g['name']}: {g['value']:.4g}{g.get('unit', '')} (goal {op} {g['target']:.4g})"
    return line + ("" if g.get("passed") is not None else " - not judged: quick run")


def _json_default(o):
    import torch

    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def default_plot(result: dict, png: Path) -> None:
    """Bar chart of the goals: value and target side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    goals = result.get("goals") or []
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(goals) + 2), 3.5))
    if goals:
        xs = range(len(goals))
        ax.bar([x - 0.2 for x in xs], [g["value"] for g in goals], 0.4, label="measured")
        ax.bar([x + 0.2 for x in xs], [g["target"] for g in goals], 0.4, label="target")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([g["name"] for g in goals], rotation=20, ha="right", fontsize=8)
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no goals reported", ha="center", va="center")
    ax.set_title(f"{result.get('benchmark', '')}: goals (measured vs target)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_header(result: dict) -> str:
    """The line every plot carries: benchmark, its settings, threads and machine, and a quick-run warning."""
    machine = result.get("machine") or {}
    parts = [str(result.get("benchmark", "benchmark"))]
    settings = result.get("settings") if isinstance(result.get("settings"), dict) else result.get("setting")
    if isinstance(settings, dict) and settings:
        parts.append(", ".join(f"{k}={v}" for k, v in settings.items()))
    parts.append(f"{machine.get('threads', '?')} torch thread(s) of {machine.get('cpu_count', '?')} CPUs, "
                 f"seed {result.get('seed', 0)}, torch {result.get('torch_version', '?')}")
    if result.get("quick"):
        parts.append(QUICK_NOTE.upper())
    return " | ".join(parts)


def stamp_plot(png: Path, result: dict, dpi: int = 110) -> None:
    """Add :func:`plot_header` above the picture in ``png`` (pixels unchanged, the canvas grows)."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    img = mpimg.imread(png)
    h, w = img.shape[:2]
    fontsize = 8
    chars_per_line = max(40, int(w / (fontsize * dpi / 72 * 0.56)))
    lines = textwrap.wrap(plot_header(result), chars_per_line)[:4]
    header_px = int(len(lines) * fontsize * dpi / 72 * 1.4) + 8
    fig = plt.figure(figsize=(w / dpi, (h + header_px) / dpi), dpi=dpi)
    fig.figimage(img, xo=0, yo=0, origin="upper")
    fig.text(0.5, 1 - 4 / (h + header_px), "\n".join(lines), ha="center", va="top", fontsize=fontsize,
             color="darkred" if result.get("quick") else "black")
    fig.savefig(png, dpi=dpi)
    plt.close(fig)


def run_benchmark(bench: Benchmark, json_path: str | os.PathLike | None = None, *,
                  quick: bool = False, threads: int = 1, seed: int = 0,
                  show_progress: bool = True) -> dict:
    """Run one benchmark, write ``json_path`` and a PNG beside it; return the result dict.

    On a quick run the goals are reported, not judged (:func:`judge_goals`), the JSON says
    ``"quick": true`` with a note, and the plot's header says so.
    """
    import torch

    from .measure import fixed_threads

    json_path = Path(json_path or Path("bench-results") / f"{bench.name}.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    ctx = BenchContext(quick=quick, threads=threads, out_dir=json_path.parent, seed=seed,
                       show_progress=show_progress)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with fixed_threads(threads):
        data = bench.run(ctx)
    from ._version import __version__
    result = {
        "benchmark": bench.name,
        "summary": bench.summary,
        "slimkit_version": __version__,
        "torch_version": torch.__version__,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "threads": threads},
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 2),
        **data,
        "quick": quick,
    }
    if quick:
        result["quick_note"] = QUICK_NOTE
    if "goals" in result:
        result["goals"] = judge_goals(result["goals"] or [], quick)
    from .io import atomic_write_text

    atomic_write_text(json_path, json.dumps(result, indent=2, default=_json_default) + "\n")
    png = json_path.with_suffix(".png")
    partial = png.with_name(f".{png.stem}.partial.png")       # the plot is drawn aside, then renamed
    (bench.plot or default_plot)(result, partial)
    stamp_plot(partial, result)
    os.replace(partial, png)
    result["plot"] = str(png)
    return result


def benchmarks() -> dict[str, Benchmark]:
    """Registered benchmarks by name."""
    from .host import HOST

    def make(*args, **kwargs):
        if len(args) == 1 and not kwargs and isinstance(args[0], Benchmark):
            return args[0]
        return Benchmark(*args, **kwargs)

    return HOST.collect("register_benchmarks", key=lambda b: b.name, make=make)
