"""Latency protocol: fixed threads, warm-up, repeated runs, median and trimmed mean with spread."""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch


@contextlib.contextmanager
def fixed_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (``None`` leaves it unchanged)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def trimmed_mean(values: list[float], trim: float = 0.1) -> float:
    """Mean after dropping ``trim`` of the values from each end (HAT's protocol)."""
    v = sorted(values)
    k = int(len(v) * trim)
    v = v[k: len(v) - k] or v
    return sum(v) / len(v)


@dataclass
class LatencyResult:
    """Latency of one callable, in milliseconds."""

    median_ms: float
    mean_ms: float
    trimmed_mean_ms: float
    p95_ms: float
    min_ms: float
    std_ms: float
    iqr_ms: float
    runs: int
    warmup: int
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def _percentile(v: list[float], q: float) -> float:
    v = sorted(v)
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _result(times: list[float], warmup: int, threads: int, trim: float) -> LatencyResult:
    q1, q3 = _percentile(times, 0.25), _percentile(times, 0.75)
    return LatencyResult(
        median_ms=statistics.median(times),
        mean_ms=statistics.fmean(times),
        trimmed_mean_ms=trimmed_mean(times, trim),
        p95_ms=_percentile(times, 0.95),
        min_ms=min(times),
        std_ms=statistics.pstdev(times) if len(times) > 1 else 0.0,
        iqr_ms=q3 - q1,
        runs=len(times),
        warmup=warmup,
        threads=threads,
    )


def measure_latency_interleaved(fns: dict, *, warmup: int = 3, runs: int = 10, threads: int | None = 1,
                                trim: float = 0.1, progress=None) -> dict:
    """Time several callables round-robin: each round calls every ``fns[key]()`` once.

    Load from other processes then hits all candidates alike, so ratios between them are
    far steadier than timing each in its own block. Returns ``{key: LatencyResult}``.
    ``progress`` optionally wraps the range of rounds (e.g. ``ctx.progress``).
    """
    times: dict = {k: [] for k in fns}
    rounds = range(warmup + runs)
    if progress is not None:
        rounds = progress(rounds)
    with fixed_threads(threads), torch.inference_mode():
        n_threads = torch.get_num_threads()
        for i in rounds:
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if i >= warmup:
                    times[k].append((time.perf_counter() - t0) * 1000.0)
    return {k: _result(v, warmup, n_threads, trim) for k, v in times.items()}


def measure_latency(fn: Callable[[], object], *, warmup: int = 3, runs: int = 10,
                    threads: int | None = 1, trim: float = 0.1,
                    min_time_s: float = 0.0) -> LatencyResult:
    """Time ``fn()`` under ``torch.inference_mode`` with ``threads`` fixed.

    ``warmup`` untimed calls, then at least ``runs`` timed calls (more until
    ``min_time_s`` has passed). Returns median, mean, trimmed mean, p95, spread.
    """
    times: list[float] = []
    with fixed_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            fn()
        start_all = time.perf_counter()
        while len(times) < runs or (time.perf_counter() - start_all) < min_time_s:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
        n_threads = torch.get_num_threads()
    return _result(times, warmup, n_threads, trim)
