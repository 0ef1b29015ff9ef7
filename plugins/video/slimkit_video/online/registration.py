"""Registers the frame sources and the top-level ``slimkit stream`` command.

The online benchmarks are registered by :mod:`slimkit_video.benchmarks`.
"""
from __future__ import annotations


def register_sources(register) -> None:
    from slimkit_video.sources.openers import register_sources as _register

    _register(register)


def register_commands(cli) -> None:
    from .stream_cli import register_cli

    register_cli(cli)
