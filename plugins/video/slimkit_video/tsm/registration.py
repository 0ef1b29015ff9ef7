"""Registers the ``tsm`` technique, its benchmarks and ``slimkit video train``."""
from __future__ import annotations


def register_techniques(register) -> None:
    from slimkit import Technique

    from .config import TSMConfig
    from .transform import apply_tsm

    register(Technique("tsm", TSMConfig, apply_tsm,
                       "Temporal Shift Module: temporal modelling for any 2D CNN at zero extra FLOPs"))


def register_commands(cli) -> None:
    from slimkit_video.train import register_cli

    register_cli()


def register_benchmarks(register) -> None:
    from slimkit import Benchmark

    from . import bench

    register(Benchmark("tsm-overhead", bench.run_overhead,
                       "TSM vs TSN latency (HF MobileNetV2, ResNet-50; 8x224x224, batch 1) and shift "
                       "implementations; goal: TSM within 3% of TSN, our shift no slower than the reference",
                       bench.plot_overhead))
    register(Benchmark("tsm-temporal", bench.run_temporal,
                       "TSM vs TSN, same budget, on generated temporal-order mp4s (left vs right motion); "
                       "goal: TSM >= 90% while TSN stays near chance", bench.plot_temporal))
