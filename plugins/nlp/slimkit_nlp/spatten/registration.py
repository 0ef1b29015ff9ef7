"""Registers the ``spatten`` technique, its benchmarks and the ``slimkit nlp demo`` command."""
from __future__ import annotations


def register_techniques(register) -> None:
    from slimkit.parts import lazy, technique

    from .config import SpattenConfig

    register(technique(SpattenConfig, lazy("slimkit_nlp.spatten.transform:apply_spatten")))


def register_benchmarks(register) -> None:
    from slimkit import Benchmark

    from ..benchmarks import register_spatten_benchmarks

    register_spatten_benchmarks(register)
    from ..benchmarks import spatten_llm

    register(Benchmark("spatten-llm", spatten_llm.run,
                       "SmolLM2-135M, ~1,000-token prompts, KV budgets 50%/25%: spatten vs kvpress's own presses "
                       "(StreamingLLM, SnapKV, ObservedAttention, TOVA, Knorm, ExpectedAttention): top-1/KL/perplexity, "
                       "retrieval, prefill time, decode tok/s, KV bytes", plot=spatten_llm.plot))
    from ..benchmarks import spatten_retrieval

    register(Benchmark("spatten-retrieval", spatten_retrieval.run,
                       "SpAtten on all-MiniLM-L6-v2 judged by retrieval: 512-token documents of the evaluation "
                       "plays (500 with distractors), 128-token queries from the same scene; Recall@1/@10, MRR "
                       "vs dense, document-encoder speed-up and Mult-Adds; cumulative (drop, merge, distilled, "
                       "heads) vs per-layer and random", plot=spatten_retrieval.plot))


def register_commands(cli) -> None:
    """``slimkit nlp demo``, in the ``nlp`` group of ``cli`` (added by :mod:`slimkit_nlp.cli`)."""
    from .demo import demo_command

    cli.commands["nlp"].add_command(demo_command, "demo")
