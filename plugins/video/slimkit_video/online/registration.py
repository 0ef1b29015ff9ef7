"""Registers the frame sources, the online benchmarks and the top-level ``slimkit stream`` command."""
from __future__ import annotations


def register_sources(register) -> None:
    from slimkit_video.sources.openers import register_sources as _register

    _register(register)


def register_commands(cli) -> None:
    from .stream_cli import register_cli

    register_cli(cli)


def register_benchmarks(register) -> None:
    from .bench import register_benchmarks as _register

    _register(register)
