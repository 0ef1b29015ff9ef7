"""Options of the ``lsra`` conversion (``slimkit.apply(model, "lsra", ...)``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from slimkit import ConfigError, TechniqueConfig


@dataclass
class LSRAConfig(TechniqueConfig):
    """Turn a GPT-2 or BERT-family model's self-attention blocks into LSRA blocks.

    - ``conv_type``: ``"lightweight"`` (softmax kernel per head group) or ``"dynamic"`` (kernel
      predicted from the input).
    - ``attention_ratio``: fraction of the heads (and their channels) kept in the attention half;
      the rest of the channels go through the new convolution branch.
    - ``kernel_sizes``: conv kernel per layer (cut to the depth; the last repeated if too short).
    - ``conv_heads``: head groups sharing a conv kernel. ``glu``: GLU on the conv branch input.
    - ``weight_dropout``: DropConnect on the conv kernel while training.
    - ``ffn_dim``: None keeps the FFN; a number flattens it by keeping that many hidden units
      (largest ``|w_in| * |w_out|``), e.g. ``ffn_dim=hidden_size`` for the paper's flattened FFN.
    - ``causal``: None = GPT-2 causal, BERT bidirectional (or causal when ``is_decoder``).
    - ``seed``: seed of the fresh conv-branch initialisation (the conversion is deterministic).
    """

    technique: ClassVar[str] = "lsra"
    version: ClassVar[int] = 1

    conv_type: Literal["lightweight", "dynamic"] = "lightweight"
    attention_ratio: float = 0.5
    kernel_sizes: tuple[int, ...] = (3, 7, 15, 31, 31, 31)
    conv_heads: int = 4
    glu: bool = True
    weight_dropout: float = 0.0
    ffn_dim: Optional[int] = None
    causal: Optional[bool] = None
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 < self.attention_ratio < 1.0:
            raise ConfigError(f"attention_ratio must be between 0 and 1 (exclusive), got {self.attention_ratio}")
        if not self.kernel_sizes or any(k < 1 for k in self.kernel_sizes):
            raise ConfigError(f"kernel_sizes must be a non-empty list of sizes >= 1, got {list(self.kernel_sizes)}")
        if 1 in self.kernel_sizes:
            raise ConfigError(f"kernel_sizes {list(self.kernel_sizes)} holds a size of 1, whose softmax-normalised "
                              f"kernel is the constant 1, so that conv branch would see no neighbouring token; "
                              f"use sizes >= 2 (e.g. 3)")
        if self.conv_heads < 1:
            raise ConfigError(f"conv_heads must be >= 1, got {self.conv_heads}")
        if not 0.0 <= self.weight_dropout < 1.0:
            raise ConfigError(f"weight_dropout must be in [0, 1), got {self.weight_dropout}")
        if self.ffn_dim is not None and self.ffn_dim < 1:
            raise ConfigError(f"ffn_dim must be None (keep the FFN) or >= 1, got {self.ffn_dim}")
