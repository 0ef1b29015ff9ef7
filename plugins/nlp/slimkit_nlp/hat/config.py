"""``slimkit.apply(model, "hat", ...)`` options: the elastic choices around a dense GPT-2."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from slimkit import ConfigError, TechniqueConfig


@dataclass
class HatConfig(TechniqueConfig):
    """Design space built around a GPT-2 model (decoder-only SuperTransformer).

    The maxima are the model's own sizes (so the largest SubTransformer is the model);
    empty lists take defaults: embed dims {n/2, 3n/4, n}, FFN {inner/4, inner/2, inner},
    heads {n_head/2, n_head} (those dividing n_embd), layers {ceil(L/2) .. L}. Given
    values are merged with the model's maximum. ``dropout`` is used while training.
    """

    technique: ClassVar[str] = "hat"
    version: ClassVar[int] = 1

    embed_choices: list[int] = field(default_factory=list)
    ffn_choices: list[int] = field(default_factory=list)
    head_choices: list[int] = field(default_factory=list)
    layer_choices: list[int] = field(default_factory=list)
    dropout: float = 0.0

    def validate(self) -> None:
        for name in ("embed_choices", "ffn_choices", "head_choices", "layer_choices"):
            if any(v <= 0 for v in getattr(self, name)):
                raise ConfigError(f"hat option {name!r} must hold positive integers, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"hat option 'dropout' must be in [0, 1), got {self.dropout}")
