"""Registers the frame sources, the online benchmarks and the top-level ``slimkit stream`` command."""
from __future__ import annotations


def register_sources(register) -> None:
    from slimkit_video.sources.openers import register_sources as _register

    _register(register)
