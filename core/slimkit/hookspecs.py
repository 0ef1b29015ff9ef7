"""The hooks a slimkit plugin can implement.

A plugin is a module (or object) with functions marked ``@slimkit.hookimpl``,
exposed through the ``slimkit.plugins`` entry-point group, exactly as the
built-in ``video`` and ``nlp`` plugins are. Every ``register_*`` hook receives a
``register`` callable; call it once per thing you provide. Hooks fire lazily,
the first time the host needs that kind of thing (and again after a plugin is
registered or unregistered); they return nothing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import pluggy

if TYPE_CHECKING:
    import click
    import numpy as np
    from torch import nn

    from .technique import Technique

hookspec = pluggy.HookspecMarker("slimkit")
hookimpl = pluggy.HookimplMarker("slimkit")


class RegisterModel(Protocol):
    """The ``register`` that :func:`register_models` receives."""

    def __call__(self, name: str, builder: Callable[..., nn.Module], summary: str = "") -> None: ...


class RegisterSource(Protocol):
    """The ``register`` that :func:`register_sources` receives."""

    def __call__(self, scheme: str, opener: Callable[..., Iterator[np.ndarray]], summary: str = "") -> None: ...


#: ``fn(module, inputs, output) -> int``: the Mult-Adds of one call of ``module``
MacsCounter = Callable[["nn.Module", tuple[Any, ...], Any], int]

# ``slimkit.Benchmark`` and ``slimkit.convert.Converter`` stay ``Any`` here: their modules import the
# host, which imports this module, and modules import each other without circles (tests/test_structure.py).


@hookspec
def register_techniques(register: Callable[[Technique], None]) -> None:
    """Register model transformations.

    Fires: the first time ``slimkit.techniques()``, ``slimkit.apply`` or
    ``slimkit.load_config`` needs the technique table.
    Call: ``register(slimkit.Technique(name, config_class, apply_fn, summary))``
    once per technique; ``apply_fn(model, config) -> model``.
    Returns: nothing.
    """


@hookspec
def register_models(register: RegisterModel) -> None:
    """Register model builders (networks a user can build by name).

    Fires: the first time ``slimkit.models()`` or ``slimkit.build_model`` runs.
    Call: ``register(name, builder, summary)`` with ``builder(**options) -> nn.Module``.
    Returns: nothing.
    """


@hookspec
def register_sources(register: RegisterSource) -> None:
    """Register frame sources for streaming inference.

    Fires: the first time ``slimkit.sources()`` or ``slimkit.open_source`` runs.
    Call: ``register(scheme, opener, summary)``; ``opener(spec: str, **options)``
    returns an iterator of ``(H, W, 3)`` uint8 RGB frames and may carry ``fps``.
    A spec ``"scheme:rest"`` goes to the opener of ``scheme``; a spec without a
    known scheme goes to the ``file`` opener.
    Returns: nothing.
    """


@hookspec
def register_benchmarks(register: Callable[[Any], None]) -> None:
    """Register benchmarks for ``slimkit bench``.

    Fires: the first time ``slimkit bench`` or ``slimkit.benchmarks()`` runs.
    Call: ``register(slimkit.Benchmark(name, run, summary, plot=None))``;
    ``run(ctx: BenchContext) -> dict`` returns JSON-serialisable results.
    Returns: nothing.
    """


@hookspec
def register_macs_counters(register: Callable[[type[nn.Module], MacsCounter], None]) -> None:
    """Teach the Mult-Adds counter about a plugin's own module types.

    Fires: the first time ``slimkit.measure.count_macs`` runs.
    Call: ``register(module_type, fn)`` with ``fn(module, inputs, output) -> int``
    Mult-Adds of one call; operations inside such a module are not counted again.
    Returns: nothing.
    """


@hookspec
def register_converters(register: Callable[[Any], None]) -> None:
    """Register checkpoint converters ("bring your weights": ``slimkit convert KIND CHECKPOINT OUT``).

    Fires: the first time ``slimkit.convert(...)``, ``slimkit.convert.converters()``,
    ``slimkit.convert.load_converted`` or ``slimkit convert`` needs the converter table.
    Call: ``register(slimkit.convert.Converter(kind, run, build, summary))`` once per source kind, with
    ``run(checkpoint: slimkit.convert.Checkpoint, **options) -> slimkit.convert.Converted`` (builds the
    target model and records in a ``slimkit.convert.WeightMap`` where each of its tensors came from) and
    ``build(spec: dict) -> nn.Module`` (rebuilds the bare target model from the JSON spec the conversion
    saved, so that ``load_converted`` can re-apply the techniques and load the weights).
    Returns: nothing.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``slimkit`` command line.

    Fires: once, when the ``slimkit`` CLI starts.
    Call: decorate functions with ``@cli.command()`` or add a ``click.Group``
    with ``cli.add_command(group)``; ``cli`` is the top-level ``click.Group``.
    Returns: nothing.
    """
