"""Small models shipped with slimkit_nlp.

``load_shakespeare_gpt2()``: a byte-level GPT-2 (vocabulary 256, 4 layers, d=256, 4 heads,
context 1024) trained a few CPU minutes on ``slimkit_nlp.data.load_text("train")`` by
``scripts/train_gpt2_shakespeare.py``; stored as float16 safetensors, loaded as float32.
Tokenize with ``slimkit_nlp.data.ByteTokenizer``.
"""
from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
SHAKESPEARE_GPT2 = ASSETS / "gpt2-shakespeare"


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


__all__ = ["load_shakespeare_gpt2", "SHAKESPEARE_GPT2"]
