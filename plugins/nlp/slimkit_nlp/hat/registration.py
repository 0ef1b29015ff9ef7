"""Registration of HAT: the ``hat`` technique, its benchmarks and the ``slimkit hat`` commands."""
from __future__ import annotations


def register_techniques(register) -> None:
    from slimkit import Technique
    from .config import HatConfig
    from .transform import apply_hat
    register(Technique("hat", HatConfig, apply_hat,
                       "HAT SuperTransformer from GPT-2: latency predictor, evolutionary search, standalone export"))


def register_benchmarks(register) -> None:
    from slimkit import Benchmark
    from . import bench
    register(Benchmark("hat-predictor", bench.run_predictor,
                       "HAT latency predictor on this CPU: held-out Kendall tau and MAPE, MLP vs FLOPs fit",
                       bench.plot_predictor))
    register(Benchmark("hat-search", bench.run_search,
                       "HAT evolutionary vs random search under a latency bound (5 seeds)", bench.plot_search))
    register(Benchmark("hat-export", bench.run_export,
                       "HAT export: equivalence and latency of the standalone model vs the weight-shared slice"))


def register_commands(cli) -> None:
    from .cli import hat
    cli.add_command(hat)
