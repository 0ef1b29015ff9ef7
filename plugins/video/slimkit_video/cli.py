"""The ``slimkit video`` command group; technique parts add their sub-commands to ``video``."""
from __future__ import annotations

import click


@click.group()
def video() -> None:
    """Video commands: training."""


def register_commands(cli) -> None:
    cli.add_command(video)
