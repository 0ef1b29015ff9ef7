"""Benchmark-only code for the LLM KV-cache comparisons (library code must never import it).

``llm_eval``: the shared harness (prompts, the :class:`~.llm_eval.Method` interface, fidelity,
retrieval and timing); ``peers``: the peer virtualenv (kvpress needs transformers<5.3) in which
the LLM benchmarks run so that every method is timed in one process; ``spatten``: the
``spatten-encoder``/``-decoder``/``-heads`` benchmarks (:func:`register_spatten_benchmarks`).
"""
from __future__ import annotations


def register_spatten_benchmarks(register) -> None:
    """``spatten-encoder``, ``spatten-decoder`` and ``spatten-heads`` (:mod:`.spatten`), imported when run.

    Called by ``slimkit_nlp.spatten.registration``; registering imports neither torch nor the benchmark code.
    """
    import warnings

    from slimkit import Benchmark
    from slimkit.parts import lazy

    warnings.filterwarnings("ignore", message="spatten: switched")  # as registration always did
    module = "slimkit_nlp.benchmarks.spatten"
    register(Benchmark("spatten-encoder", lazy(f"{module}:run_encoder"),
                       "SpAtten token pruning on all-MiniLM-L6-v2: speed-up vs cosine, cumulative vs random/per-layer",
                       lazy(f"{module}:plot_encoder")))
    register(Benchmark("spatten-decoder", lazy(f"{module}:run_decoder"),
                       "SpAtten KV pruning in GPT-2 generation vs StreamingLLM/H2O/random eviction at 25%/50% budgets",
                       lazy(f"{module}:plot_decoder")))
    register(Benchmark("spatten-heads", lazy(f"{module}:run_heads"),
                       "SpAtten head pruning on MiniLM: heads pruned vs fidelity and Mult-Adds",
                       lazy(f"{module}:plot_heads")))
