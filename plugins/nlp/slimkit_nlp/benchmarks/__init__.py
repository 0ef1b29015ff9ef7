"""Benchmark-only code for the LLM KV-cache comparisons (library code must never import it).

``llm_eval``: the shared harness (prompts, the :class:`~.llm_eval.Method` interface, fidelity,
retrieval and timing); ``peers``: the peer virtualenv (kvpress needs transformers<5.3) in which
the LLM benchmarks run so that every method is timed in one process.
"""
