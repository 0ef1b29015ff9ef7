"""Registration of HAT: the ``hat`` technique, its benchmarks and the ``slimkit hat`` commands.

Work functions are referenced lazily, so listing plugins does not import transformers.
"""
from __future__ import annotations

from slimkit.parts import lazy

_BENCH = "slimkit_nlp.benchmarks.hat"


def register_techniques(register) -> None:
    from slimkit.parts import technique

    from .config import HatConfig

    register(technique(HatConfig, lazy("slimkit_nlp.hat.transform:apply_hat")))


def register_benchmarks(register) -> None:
    from slimkit import Benchmark

    register(Benchmark("hat-predictor", lazy(f"{_BENCH}:run_predictor"),
                       "HAT latency predictor on this CPU: held-out Kendall tau and MAPE, MLP vs FLOPs fit",
                       lazy(f"{_BENCH}:plot_predictor")))
    register(Benchmark("hat-search", lazy(f"{_BENCH}:run_search"),
                       "HAT evolutionary vs random search under a latency bound (5 seeds)",
                       lazy(f"{_BENCH}:plot_search")))
    register(Benchmark("hat-export", lazy(f"{_BENCH}:run_export"),
                       "HAT export: equivalence and latency of the standalone model vs the weight-shared slice"))


def register_commands(cli) -> None:
    from .cli import hat

    cli.add_command(hat)
