"""Configuration of the temporal shift module (TSM)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Union

from slimkit import ConfigError, TechniqueConfig


@dataclass
class TSMConfig(TechniqueConfig):
    """Options of ``slimkit.apply(model, "tsm", ...)``.

    - ``n_segment``: frames per clip ``T`` (at least 2; 1 only with ``direction="past"``, where a
      one-frame clip is the first step of an online stream); the model sees ``(N*T, C, H, W)``.
      ``None`` (the default): the ``n_segment`` of the ``VideoClassifier`` the shifts go into, or
      8 (the paper's clip length) for a bare backbone. An explicit value that disagrees with the
      classifier's is refused (it would shift across groups of the wrong number of frames).
    - ``shift_div``: ``C // shift_div`` channels move each way (8 -> a quarter of the channels move
      with ``direction="both"``, an eighth with ``"past"``). At least 2 (so that the two moving groups
      of ``"both"`` fit in ``C``), and at most the channel count of the narrowest shifted layer
      (checked when applied: a larger value would move no channel there, i.e. plain TSN).
    - ``direction``: ``"both"`` (offline, the paper's shift) or ``"past"`` (causal, online use).
    - ``place``: ``"blockres"`` shifts only the residual branch (input of its first conv);
      ``"block"`` shifts the whole block input, identity path included.
    - ``target_modules``: for any other model, a list of qualified module names or a regex
      (full match on the qualified names); the shift is applied to each targeted module's input.
    - ``temporal_pool``: halve ``T`` after the first stage (max-pool over time, kernel 3, stride 2);
      needs ``n_segment >= 3`` so that at least 2 frames are left to shift between after the pool.
    """

    technique: ClassVar[str] = "tsm"
    version: ClassVar[int] = 1

    n_segment: Optional[int] = None
    shift_div: int = 8
    direction: Literal["both", "past"] = "both"
    place: Literal["blockres", "block"] = "blockres"
    target_modules: Optional[Union[list[str], str]] = None
    temporal_pool: bool = False

    def validate(self) -> None:
        if self.n_segment is not None:
            check_segments(self.n_segment, self.temporal_pool, self.direction)
        if self.shift_div < 2:
            raise ConfigError(
                f"shift_div={self.shift_div} would move every channel (C // shift_div channels move one way "
                f"and, with direction='both', as many the other way), leaving none for the current frame; "
                f"use shift_div >= 2 (8 is the paper's value)")
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as e:
                raise ConfigError(
                    f"target_modules {self.target_modules!r} is not a valid regex ({e}); "
                    "pass a regex or a list of qualified module names") from None
        elif isinstance(self.target_modules, list) and not self.target_modules:
            raise ConfigError("target_modules is an empty list; name at least one module or leave it None")


DEFAULT_SEGMENTS = 8


def check_segments(n_segment: int, temporal_pool: bool, direction: str = "both") -> None:
    """Refuse clip lengths with no neighbouring frame to shift from (before or after the pool).

    ``n_segment=1`` is allowed with ``direction="past"`` only: a one-frame clip is then exactly the
    first step of the online stream (``to_online``), whose past is zeros.
    """
    if n_segment < 1 or (n_segment == 1 and direction != "past"):
        raise ConfigError(
            f"n_segment={n_segment} leaves no neighbouring frame to shift from (the shifted channels would "
            f"only be zeroed); set n_segment to the frames per clip, at least 2")
    if temporal_pool and pooled_segments(n_segment) < 2:
        raise ConfigError(
            f"temporal_pool with n_segment={n_segment} leaves {pooled_segments(n_segment)} frame per clip "
            f"after the pool, so the later shifts would only zero channels; use n_segment >= 3 or "
            f"temporal_pool=False")


def pooled_segments(n_segment: int) -> int:
    """Frames left after the temporal pool (kernel 3, stride 2, padding 1): ``ceil(T / 2)``."""
    return (n_segment - 1) // 2 + 1
