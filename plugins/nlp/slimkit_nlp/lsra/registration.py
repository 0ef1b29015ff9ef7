"""Registers the ``lsra`` technique, the Lite Transformer model builders, the conv-branch Mult-Adds
counters, the ``lsra-cost`` / ``lsra-quality`` benchmarks and the ``slimkit nlp train`` command."""
from __future__ import annotations


def register_techniques(register) -> None:
    from slimkit.parts import lazy, technique

    from .config import LSRAConfig

    register(technique(LSRAConfig, lazy("slimkit_nlp.lsra.transform:apply_lsra")))


def _lite_causal_lm(**options):
    from .modeling import LiteTransformerConfig, LiteTransformerForCausalLM

    return LiteTransformerForCausalLM(LiteTransformerConfig(**options))


def _lite_seq2seq(**options):
    from .modeling import LiteTransformerConfig, LiteTransformerForConditionalGeneration

    return LiteTransformerForConditionalGeneration(LiteTransformerConfig(**options))


def register_models(register) -> None:
    register("lite-transformer-lm", _lite_causal_lm,
             "Lite Transformer causal LM (LSRA decoder; options: LiteTransformerConfig fields)")
    register("lite-transformer-seq2seq", _lite_seq2seq,
             "Lite Transformer encoder-decoder (options: LiteTransformerConfig fields)")


def _count_lightweight(m, inputs, output):
    from .modules import count_lightweight_macs

    return count_lightweight_macs(m, inputs, output)


def _count_dynamic(m, inputs, output):
    from .modules import count_dynamic_macs

    return count_dynamic_macs(m, inputs, output)


def register_macs_counters(register) -> None:
    from .modules import DynamicConv, LightweightConv

    register(LightweightConv, _count_lightweight)
    register(DynamicConv, _count_dynamic)


def register_benchmarks(register) -> None:
    from slimkit import Benchmark

    from ..benchmarks import lsra as bench

    register(Benchmark("lsra-cost", bench.run_cost,
                       "LSRA vs GPT-2 Transformer: Mult-Adds per token (len 30 / 512) and latency, at equal "
                       "parameters and at equal Mult-Adds", plot=bench.plot_cost))
    register(Benchmark("lsra-quality", bench.run_quality,
                       "Lite Transformer vs GPT-2 on Shakespeare, same CPU time: validation perplexity vs Mult-Adds",
                       plot=bench.plot_quality))


def register_commands(cli) -> None:
    """``slimkit nlp train``, in the ``nlp`` group of ``cli`` (added by :mod:`slimkit_nlp.cli`)."""
    from slimkit_nlp.train import _train_command

    cli.commands["nlp"].add_command(_train_command(), "train")
