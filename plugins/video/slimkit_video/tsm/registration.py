"""Registers the ``tsm`` technique and ``slimkit video train`` (its benchmarks: :mod:`slimkit_video.benchmarks`)."""
from __future__ import annotations


def register_techniques(register) -> None:
    from slimkit.parts import lazy, technique

    from .config import TSMConfig

    register(technique(TSMConfig, lazy("slimkit_video.tsm.transform:apply_tsm")))


def register_commands(cli) -> None:
    from slimkit_video.train import train_command

    if "train" not in cli.commands["video"].commands:
        cli.commands["video"].add_command(train_command(), "train")
