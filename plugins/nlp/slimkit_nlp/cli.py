"""The ``slimkit nlp`` command group; technique parts add their sub-commands to ``nlp``."""
from __future__ import annotations

import click


@click.group()
def nlp() -> None:
    """NLP commands: corpus, training, demos."""


@nlp.command("fetch-corpus")
def fetch_corpus() -> None:
    """Download (once) and cache the built-in Shakespeare corpus."""
    from .data import corpus_dir, load_plays

    path = corpus_dir()
    click.echo(f"Shakespeare corpus: {len(load_plays(edition='both'))} plays in {path}")


def register_commands(cli) -> None:
    cli.add_command(nlp)
