"""Per-layer statistics of the last SpAtten forward: tokens and heads kept, Mult-Adds saved."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


@dataclass
class LayerStats:
    """One layer of one forward. Token counts are means over the batch of real (unpadded) tokens."""

    layer: int
    tokens_in: float          # real tokens whose hidden states entered this layer
    keys: float               # real keys attended to (cache included)
    heads_kept: int           # query heads computed
    heads_total: int
    macs: int                 # Mult-Adds this layer did (tensor sizes as run, padding slots included)
    dense_macs: int           # Mult-Adds of the same layer without any pruning
    values_fetched: float = 1.0   # share of (query, value) pairs used (local value pruning)

    @property
    def macs_saved(self) -> int:
        return self.dense_macs - self.macs


@dataclass
class SpattenStats:
    """Statistics of the most recent forward (``model.spatten_stats``).

    ``kept_indices`` ``(B, L_kept)``: positions in the forward's input of the tokens that left the
    last layer (-1 marks padding slots); ``kv_tokens`` per layer: real cached tokens after the
    forward (decoders with a cache); ``head_ids`` per layer: the kept head units ``(B, U)``
    (a unit is a key/value head with its query heads) or None when all were computed.
    """

    layers: list[LayerStats] = field(default_factory=list)
    input_tokens: float = 0.0
    kept_indices: torch.Tensor | None = None
    kv_tokens: list[float] = field(default_factory=list)
    head_ids: list = field(default_factory=list)      # per layer: (B, U) kept head units, or None = all

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.layers)

    @property
    def dense_macs(self) -> int:
        return sum(s.dense_macs for s in self.layers)

    @property
    def macs_saved(self) -> int:
        return self.dense_macs - self.macs

    @property
    def macs_ratio(self) -> float:
        """Dense / pruned Mult-Adds of the transformer layers (embeddings and heads excluded)."""
        return self.dense_macs / max(self.macs, 1)

    def tokens_kept(self) -> list[float]:
        return [s.tokens_in for s in self.layers]

    def heads_kept(self) -> list[int]:
        return [s.heads_kept for s in self.layers]

    def to_dict(self) -> dict:
        return {"layers": [{**asdict(s), "macs_saved": s.macs_saved} for s in self.layers],
                "input_tokens": self.input_tokens, "macs": self.macs, "dense_macs": self.dense_macs,
                "macs_saved": self.macs_saved, "kv_tokens": list(self.kv_tokens)}

    def __str__(self) -> str:
        rows = [f"layer {s.layer}: tokens {s.tokens_in:.1f}, heads {s.heads_kept}/{s.heads_total}, "
                f"MACs {s.macs / 1e6:.1f}M of {s.dense_macs / 1e6:.1f}M" for s in self.layers]
        return "\n".join(rows + [f"total: {self.macs / 1e6:.1f}M of {self.dense_macs / 1e6:.1f}M Mult-Adds "
                                 f"({self.macs_ratio:.2f}x fewer)"])
