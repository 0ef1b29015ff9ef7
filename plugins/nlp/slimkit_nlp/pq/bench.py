"""Benchmarks ``pq-fidelity`` and ``pq-cache`` (filled in below)."""
from __future__ import annotations


def run_fidelity(ctx) -> dict:
    raise NotImplementedError


def plot_fidelity(result, png) -> None:
    pass


def run_cache(ctx) -> dict:
    raise NotImplementedError


def plot_cache(result, png) -> None:
    pass
