"""Config of SpAtten progressive quantization (``progressive-quant``)."""
from dataclasses import dataclass
from typing import ClassVar, Literal

from slimkit import ConfigError, TechniqueConfig

FAST_BITS = (1, 2, 4, 8)

# The values of the config's string fields, written once (the ``Literal`` annotations below repeat them).
#: ``layout``: keys per channel over groups of ``key_group`` tokens, packed planes (the default)
LAYOUT_GROUPED = "grouped"
#: ``layout``: keys and queries per head and token over head_dim (config version 1)
LAYOUT_TOKEN = "token"
#: ``criterion``: recompute a row with the LSBs when its largest MSB probability is under ``threshold``
CRITERION_MAX_PROB = "max_prob"
#: ``criterion``: recompute a row when its estimated KL(exact || MSB-only) exceeds ``kl_threshold``
CRITERION_EXPECTED_KL = "expected_kl"
#: ``grid``: the ``msb+lsb``-bit grid aligned so that the MSB plane alone is static ``msb``-bit quantization
GRID_MSB = "msb"
#: ``grid``: the plain min..max grid
GRID_MINMAX = "minmax"


@dataclass
class ProgressiveQuantConfig(TechniqueConfig):
    """SpAtten progressive quantization of attention inputs, with a packed low-bit KV cache.

    Keys are quantized to ``msb_bits + lsb_bits`` bits and split into an MSB plane and an LSB
    plane. Probabilities come from the MSB plane; rows (head, query) whose largest probability
    is below ``threshold`` are recomputed with MSB+LSB (``threshold=1.0``: all rows, ``0.0``:
    none). ``criterion="expected_kl"`` replaces the max-probability test by an error estimate:
    a row is recomputed when the expected KL divergence (nats) between its exact and its
    MSB-only probabilities, ``1/2 * sum_j p_j (1 - p_j) * scaling**2 * sum_c q_c**2 *
    step_jc**2 / 12`` (``step_jc``: the MSB step of key ``j`` in channel ``c``), exceeds
    ``kl_threshold``; it needs no LSB reads. ``threshold`` 1.0 and 0.0 keep their meaning
    (always / never) under both criteria. ``lsb_bits=0`` is plain static quantization at
    ``msb_bits``. ``grid``: ``"msb"`` aligns the ``msb+lsb``-bit grid so that the MSB plane
    alone equals static ``msb``-bit quantization (see ``quant.quantize``); ``"minmax"`` is the
    plain grid from minimum to maximum.

    ``layout`` (version 2):

    - ``"grouped"`` (default): keys quantized per channel over groups of ``key_group``
      consecutive tokens (KIVI: rotary models have large per-channel key outliers), values per
      token in groups of ``value_group`` channels along head_dim (0, or a size of at least
      head_dim: the whole head), scales and zeros in float16, the newest ``residual_length``
      tokens (plus those of the group being filled, fewer than ``key_group``) kept in float16;
      bit widths must divide 8 (1, 2, 4 or 8: ``8 / bits`` codes per byte). Queries are not
      quantized (``quantize_queries`` is ignored). ``exact_prefill``: the call that fills an
      empty ``PQCache`` layer (the prefill) attends to its own float states, as KIVI and
      transformers' ``QuantizedCache`` do, and the cache keeps them quantized for the next
      calls (without a cache, e.g. encoders, attention always reads the quantized states).
      ``value_rotation``: values are rotated by an orthonormal Hadamard matrix along head_dim
      before they are quantized (QuaRot: outliers spread over the head, a smaller range per
      group) and rotated back when dequantized, once per group, not per step. ``keep_views``:
      keep float32 copies of the dequantized prefix (each group dequantized once, when it is
      quantized), so that a decode step dequantizes nothing: fast on CPUs, but it holds as many
      bytes as a float32 cache besides the packed one; ``False`` dequantizes the packed planes in
      every call instead (resident memory = the packed cache). See ``grouped.py``.
    - ``"token"`` (version 1): keys and queries quantized per head and token over head_dim
      (one scale and zero per row), values per token at ``value_bits``; any width 1..16.
      ``quantize_queries``: quantize queries when a call has several (encoders, prefill).

    ``cache``: ``model.generate()`` uses the packed low-bit KV cache (``PQCache``) unless
    another cache is passed.

    Defaults (version 2), measured on SmolLM2-135M (``slimkit bench pq-llm``): 2+2-bit keys on
    the min..max grid, 4-bit values, groups of 32 tokens / whole heads, an 8-token float16
    window. On that model the recompute tests ask for the LSBs in more than 99% of the decode
    rows (``expected_kl`` at 0.002: 99.4%), so ``threshold=1.0`` (always read them: 4 key bits)
    is the default: same quality, one pass. Lower ``threshold`` to read MSBs first.
    ``keep_views=False`` is the default so that resident memory is the packed cache (7.9 MB
    after 1,000 + 128 tokens against 52 MB in float32); ``True`` decodes faster on CPUs but holds
    float32 copies too (92 MB more).
    """

    technique: ClassVar[str] = "progressive-quant"
    # 2: layout (grouped by default), key_group, value_group, residual_length, exact_prefill, value_rotation;
    # new defaults (2+2 bits, 4-bit values, min..max grid, threshold 1.0, expected_kl)
    version: ClassVar[int] = 2

    msb_bits: int = 2
    lsb_bits: int = 2
    threshold: float = 1.0
    value_bits: int = 4
    criterion: Literal["max_prob", "expected_kl"] = CRITERION_EXPECTED_KL
    kl_threshold: float = 2e-3
    grid: Literal["msb", "minmax"] = GRID_MINMAX
    quantize_queries: bool = True
    cache: bool = True
    layout: Literal["grouped", "token"] = LAYOUT_GROUPED
    key_group: int = 32
    value_group: int = 64
    residual_length: int = 8
    exact_prefill: bool = True
    value_rotation: bool = True
    keep_views: bool = False

    V1_DEFAULTS: ClassVar[dict] = dict(msb_bits=6, lsb_bits=4, threshold=0.1, value_bits=8, criterion=CRITERION_MAX_PROB,
                                       kl_threshold=1e-3, grid=GRID_MSB, quantize_queries=True, cache=True)

    @classmethod
    def migrate(cls, data: dict, from_version: int) -> dict:
        if from_version < 2:  # version 1: per-token layout only, and its defaults for any field left out
            data = {**cls.V1_DEFAULTS, **data, "layout": LAYOUT_TOKEN}
        return data

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

        if self.layout == LAYOUT_GROUPED:
            for name in ("msb_bits", "lsb_bits", "value_bits"):
                bits = getattr(self, name)
                if bits not in FAST_BITS and not (name == "lsb_bits" and bits == 0):
                    raise ConfigError(
                        f"{name}={bits} does not divide 8: the grouped layout packs 8 / bits codes per byte, so "
                        f"{name} must be 1, 2, 4 or 8{' (or 0)' if name == 'lsb_bits' else ''}; use e.g. "
                        f"msb_bits=2, lsb_bits=2, value_bits=4, or layout='token' for any width")
            if not 1 <= self.key_group <= 4096:
                raise ConfigError(f"key_group must be between 1 and 4096 tokens, got {self.key_group}; "
                                  f"use e.g. key_group=32")
            per_byte = max(8 // bits for bits in (self.msb_bits, self.lsb_bits, self.value_bits) if bits)
            if self.key_group % per_byte:
                raise ConfigError(f"key_group={self.key_group} is not a multiple of {per_byte}: the grouped layout packs "
                                  f"{per_byte} tokens per byte at {8 // per_byte} bits, so whole key groups must fill "
                                  f"whole bytes; use e.g. key_group={max(per_byte, self.key_group // per_byte * per_byte)}")
            if self.value_group < 0:
                raise ConfigError(f"value_group must be 0 (whole head) or a positive divisor of head_dim, got "
                                  f"{self.value_group}; use e.g. value_group=32")
            if self.residual_length < 0:
                raise ConfigError(f"residual_length must be >= 0 tokens, got {self.residual_length}; "
                                  f"use e.g. residual_length=0")
        if not self.kl_threshold >= 0.0:
            raise ConfigError(f"kl_threshold must be >= 0 (nats per attention row), got {self.kl_threshold}; "
                              f"use e.g. kl_threshold=1e-3")

    @property
    def align_bits(self) -> int:
        """``lsb_bits`` passed to ``quantize`` for keys and queries (0 on the min..max grid)."""
        return self.lsb_bits if self.grid == GRID_MSB else 0

    @property
    def key_bits(self) -> int:
        """Bits of a full key code (MSB + LSB)."""
        return self.msb_bits + self.lsb_bits
