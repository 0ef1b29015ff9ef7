"""What a plugin registers: techniques, model builders and frame sources."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .config import TechniqueConfig


@dataclass
class Technique:
    """A model transformation.

    ``apply(model, config) -> model`` transforms (in place where possible) and
    returns the model; ``config_class`` is its ``TechniqueConfig`` subclass.
    ``plugin`` is filled in by the host with the registering plugin's name.
    """

    name: str
    config_class: type[TechniqueConfig]
    apply: Callable[[Any, Any], Any]
    summary: str = ""
    plugin: str = ""


@dataclass
class ModelEntry:
    """A named model builder: ``builder(**options) -> nn.Module``."""

    name: str
    builder: Callable[..., Any]
    summary: str = ""
    plugin: str = ""


@dataclass
class SourceEntry:
    """A frame source: ``opener(spec, **options)`` returns an iterator of RGB uint8 frames."""

    scheme: str
    opener: Callable[..., Any]
    summary: str = ""
    plugin: str = ""
