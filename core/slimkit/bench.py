"""Benchmarks: registered by plugins, run by ``slimkit bench NAME``, written as JSON plus a PNG.

A benchmark's ``run(ctx)`` returns a JSON-serialisable dict. Conventions:
``goals`` is a list of ``{"name", "value", "target", "passed"}`` rows (the goals
of the issue it serves); ratios are measured side by side in the same run. If the
benchmark has no ``plot(result, png_path)``, a bar chart of its goals is drawn.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .measure import fixed_threads, measure_latency, measure_latency_interleaved


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
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=not self.show_progress,
                    leave=False, dynamic_ncols=True)

    def latency(self, fn: Callable[[], Any], warmup: int | None = None, runs: int | None = None):
        """``measure_latency`` with this run's thread count (fewer runs when quick)."""
        return measure_latency(fn, warmup=warmup if warmup is not None else (2 if self.quick else 5),
                               runs=runs if runs is not None else (5 if self.quick else 20),
                               threads=self.threads)

    def latencies(self, fns: dict, warmup: int | None = None, runs: int | None = None, desc: str = "timing") -> dict:
        """Round-robin ``measure_latency_interleaved`` of several callables: use it for ratios."""
        return measure_latency_interleaved(
            fns, warmup=warmup if warmup is not None else (2 if self.quick else 5),
            runs=runs if runs is not None else (5 if self.quick else 20), threads=self.threads,
            progress=lambda it: self.progress(it, desc=desc))


def goal(name: str, value: float, target: float, higher_is_better: bool = True, unit: str = "") -> dict:
    """One goal row for a benchmark's result."""
    passed = value >= target if higher_is_better else value <= target
    return {"name": name, "value": float(value), "target": float(target),
            "higher_is_better": higher_is_better, "unit": unit, "passed": bool(passed)}


def _json_default(o):
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
    ax.set_title(result.get("benchmark", ""))
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def run_benchmark(bench: Benchmark, json_path: str | os.PathLike | None = None, *,
                  quick: bool = False, threads: int = 1, seed: int = 0,
                  show_progress: bool = True) -> dict:
    """Run one benchmark, write ``json_path`` and a PNG beside it; return the result dict."""
    json_path = Path(json_path or Path("bench-results") / f"{bench.name}.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    ctx = BenchContext(quick=quick, threads=threads, out_dir=json_path.parent, seed=seed,
                       show_progress=show_progress)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with fixed_threads(threads):
        data = bench.run(ctx)
    from . import __version__
    result = {
        "benchmark": bench.name,
        "summary": bench.summary,
        "slimkit_version": __version__,
        "torch_version": torch.__version__,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "threads": threads},
        "quick": quick,
        "seconds": round(time.perf_counter() - t0, 2),
        **data,
    }
    from .io import atomic_write_text

    atomic_write_text(json_path, json.dumps(result, indent=2, default=_json_default) + "\n")
    png = json_path.with_suffix(".png")
    partial = png.with_name(f".{png.stem}.partial.png")       # the plot is drawn aside, then renamed
    (bench.plot or default_plot)(result, partial)
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
