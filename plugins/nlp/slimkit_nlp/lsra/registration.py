"""Registers the ``lsra`` technique, its Mult-Adds counters, benchmarks and the ``slimkit nlp train`` command."""
from __future__ import annotations


def register_commands(cli) -> None:
    from slimkit_nlp.train import register_train_command

    register_train_command()
