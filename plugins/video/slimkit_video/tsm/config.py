"""Configuration of the temporal shift module (TSM)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Union

from slimkit import ConfigError, TechniqueConfig


@dataclass
class TSMConfig(TechniqueConfig):
    """Options of ``slimkit.apply(model, "tsm", ...)``.

    - ``n_segment``: frames per clip ``T``; the model sees ``(N*T, C, H, W)``.
    - ``shift_div``: ``C // shift_div`` channels move each way (8 -> a quarter of the channels move
      with ``direction="both"``, an eighth with ``"past"``).
    - ``direction``: ``"both"`` (offline, the paper's shift) or ``"past"`` (causal, online use).
    - ``place``: ``"blockres"`` shifts only the residual branch (input of its first conv);
      ``"block"`` shifts the whole block input, identity path included.
    - ``target_modules``: for any other model, a list of qualified module names or a regex
      (full match on the qualified names); the shift is applied to each targeted module's input.
    - ``temporal_pool``: halve ``T`` after the first stage (max-pool over time, kernel 3, stride 2).
    """

    technique: ClassVar[str] = "tsm"
    version: ClassVar[int] = 1

    n_segment: int = 8
    shift_div: int = 8
    direction: Literal["both", "past"] = "both"
    place: Literal["blockres", "block"] = "blockres"
    target_modules: Optional[Union[list[str], str]] = None
    temporal_pool: bool = False

    def validate(self) -> None:
        if self.n_segment < 1:
            raise ConfigError(f"n_segment must be >= 1 (frames per clip), got {self.n_segment}")
        if self.shift_div < 2:
            raise ConfigError(f"shift_div must be >= 2 (C // shift_div channels move), got {self.shift_div}")
        if self.temporal_pool and self.n_segment < 2:
            raise ConfigError("temporal_pool halves the number of frames, so it needs n_segment >= 2")
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as e:
                raise ConfigError(
                    f"target_modules {self.target_modules!r} is not a valid regex ({e}); "
                    "pass a regex or a list of qualified module names") from None
        elif isinstance(self.target_modules, list) and not self.target_modules:
            raise ConfigError("target_modules is an empty list; name at least one module or leave it None")


def pooled_segments(n_segment: int) -> int:
    """Frames left after the temporal pool (kernel 3, stride 2, padding 1): ``ceil(T / 2)``."""
    return (n_segment - 1) // 2 + 1
