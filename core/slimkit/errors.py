"""Errors that slimkit raises on bad input.

Each message is one sentence naming the problem and the fix. The CLI prints
``SlimkitError`` messages without a traceback.
"""
from __future__ import annotations


class SlimkitError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class UnknownTechniqueError(SlimkitError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingExtraError(SlimkitError, ImportError):
    """A technique, model or source needs a plugin whose extra is not installed."""


class ConfigError(SlimkitError, ValueError):
    """An option is unknown, of the wrong type or out of range; or a config file is bad."""


class UnsupportedModelError(SlimkitError, TypeError):
    """The model family is not supported by a technique (the message lists the supported ones)."""


class ShapeError(SlimkitError, ValueError):
    """A tensor has the wrong shape for the operation (the message gives the expected one)."""


class SourceError(SlimkitError, RuntimeError):
    """A frame source is unknown, missing or unreadable."""


def one_of(names) -> str:
    """Format a list of valid names for an error message: ``'a', 'b' or 'c'``."""
    names = [repr(n) for n in sorted(names)]
    if not names:
        return "(none)"
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]
