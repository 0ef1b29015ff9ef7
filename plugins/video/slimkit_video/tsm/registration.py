"""Registers the ``tsm`` technique and ``slimkit video train`` (its benchmarks: :mod:`slimkit_video.benchmarks`)."""
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
