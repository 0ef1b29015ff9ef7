"""Config of SpAtten progressive quantization (``progressive-quant``)."""
from dataclasses import dataclass
from typing import ClassVar, Literal

from slimkit import ConfigError, TechniqueConfig


@dataclass
class ProgressiveQuantConfig(TechniqueConfig):
    """SpAtten progressive quantization of attention inputs.

    Keys (and queries in the prefill) are quantized per head and token (scale and zero
    point over ``head_dim``) to ``msb_bits + lsb_bits`` bits and split into an MSB plane and
    an LSB plane. Probabilities come from the MSB plane; rows (head, query) whose largest
    probability is below ``threshold`` are recomputed with MSB+LSB (``threshold=1.0``: all
    rows, ``0.0``: none). ``criterion="expected_kl"`` replaces the max-probability test by an
    error estimate: a row is recomputed when the expected KL divergence (nats) between its
    exact and its MSB-only probabilities, ``1/2 * sum_j p_j (1 - p_j) * scaling**2 * |q|**2 *
    step_j**2 / 12`` (``step_j``: key ``j``'s MSB step), exceeds ``kl_threshold``; it needs no
    LSB reads and follows where the error is (large queries, coarse keys), which on trained
    models is mostly in confident rows that the max-probability test skips. ``threshold``
    1.0 and 0.0 keep their meaning (always / never) under both criteria. Values are quantized to ``value_bits``. ``lsb_bits=0`` is plain
    static quantization at ``msb_bits``. ``grid``: ``"msb"`` aligns the ``msb+lsb``-bit grid
    so that the MSB plane alone equals static ``msb``-bit quantization (see
    ``quant.quantize``); ``"minmax"`` is the plain fixed-point grid from row minimum to
    maximum. ``quantize_queries``: quantize queries when a call has several (encoders,
    prefill). ``cache``: ``model.generate()`` uses the packed low-bit KV cache
    (``PQCache``) unless another cache is passed.
    """

    technique: ClassVar[str] = "progressive-quant"
    version: ClassVar[int] = 1

    msb_bits: int = 6
    lsb_bits: int = 4
    threshold: float = 0.1
    value_bits: int = 8
    criterion: Literal["max_prob", "expected_kl"] = "max_prob"
    kl_threshold: float = 1e-3
    grid: Literal["msb", "minmax"] = "msb"
    quantize_queries: bool = True
    cache: bool = True

    def validate(self) -> None:
        if not 1 <= self.msb_bits <= 16:
            raise ConfigError(f"msb_bits must be between 1 and 16, got {self.msb_bits}; use e.g. msb_bits=6")
        if not 0 <= self.lsb_bits <= 15:
            raise ConfigError(f"lsb_bits must be between 0 and 15, got {self.lsb_bits}; use e.g. lsb_bits=4 "
                              f"(0 means static quantization at msb_bits)")
        if self.msb_bits + self.lsb_bits > 16:
            raise ConfigError(f"msb_bits + lsb_bits must be at most 16, got {self.msb_bits} + {self.lsb_bits} = "
                              f"{self.msb_bits + self.lsb_bits}; lower one of them")
        if not 1 <= self.value_bits <= 16:
            raise ConfigError(f"value_bits must be between 1 and 16, got {self.value_bits}; use e.g. value_bits=8")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be within [0, 1], got {self.threshold}; use e.g. threshold=0.1 "
                              f"(1.0 always recomputes with the LSBs, 0.0 never)")

        if not self.kl_threshold >= 0.0:
            raise ConfigError(f"kl_threshold must be >= 0 (nats per attention row), got {self.kl_threshold}; "
                              f"use e.g. kl_threshold=1e-3")

    @property
    def align_bits(self) -> int:
        """``lsb_bits`` passed to ``quantize`` for keys and queries (0 on the min..max grid)."""
        return self.lsb_bits if self.grid == "msb" else 0

    @property
    def key_bits(self) -> int:
        """Bits of a full key code (MSB + LSB)."""
        return self.msb_bits + self.lsb_bits
