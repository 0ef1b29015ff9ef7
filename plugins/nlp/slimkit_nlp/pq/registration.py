"""Registers the ``progressive-quant`` technique and its benchmarks with slimkit."""
from __future__ import annotations


def register_techniques(register) -> None:
    from slimkit.parts import lazy, technique

    from .config import ProgressiveQuantConfig

    # the transform imports transformers: lazy() imports it only when the technique is applied
    register(technique(ProgressiveQuantConfig, lazy("slimkit_nlp.pq.transform:apply_progressive_quant")))


def register_benchmarks(register) -> None:
    from slimkit import Benchmark

    from ..benchmarks import pq_cache as bench

    register(Benchmark("pq-fidelity", bench.run_fidelity,
                       "progressive quantization vs static quantization: bits read vs perplexity/cosine",
                       plot=bench.plot_fidelity))
    from ..benchmarks import pq_llm

    register(Benchmark("pq-llm", pq_llm.run,
                       "SmolLM2-135M, ~1,000-token prompts: pq's packed KV cache vs fp32 and transformers "
                       "QuantizedCache (quanto int4/int2, HQQ int4): KL/top-1/perplexity, KV bytes, decode tok/s",
                       plot=pq_llm.plot))
    register(Benchmark("pq-cache", bench.run_cache,
                       "packed low-bit KV cache: bytes and tokens/s of greedy generation filling a 1,024-token context, vs the fp32 cache",
                       plot=bench.plot_cache))
