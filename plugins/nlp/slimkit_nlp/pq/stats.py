"""Statistics of progressive quantization, collected by the attention function and the cache."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class PQStats:
    """Counts since the last reset (each forward, or each ``generate`` call as a whole).

    ``rows``: attention rows (batch x query head x query) computed; ``recomputed_rows``: rows
    that failed the recompute test (largest MSB probability under ``threshold``, or expected
    KL above ``kl_threshold``), recomputed with MSB+LSB;
    ``key_bits_per_element``: average key bits read per key element and row
    (``msb + lsb * recompute_rate``); ``cache_bytes``: bytes held by the packed low-bit KV
    cache after the call (``None`` when no ``PQCache`` was used), with ``cache_fp32_bytes`` and
    ``cache_bf16_bytes`` of a plain cache holding the same tokens; ``lsb_bytes_read``: bytes
    of the cache's LSB plane read for recomputation (the rest was never touched).
    ``recompute_rate_by_layer`` and ``key_bits_by_layer``: the same per layer. Rows of a prefill
    that attends to its own float states (grouped layout, ``exact_prefill``) read no quantized
    keys and are not counted.
    """

    msb_bits: int = 0
    lsb_bits: int = 0
    value_bits: int = 0
    rows: int = 0
    recomputed_rows: int = 0
    rows_by_layer: dict = field(default_factory=dict)
    recomputed_by_layer: dict = field(default_factory=dict)
    cache_bytes: int | None = None
    cache_fp32_bytes: int | None = None
    cache_bf16_bytes: int | None = None
    lsb_bytes_read: int = 0
    lsb_bytes_stored: int = 0

    def reset(self) -> None:
        self.rows = self.recomputed_rows = self.lsb_bytes_read = self.lsb_bytes_stored = 0
        self.rows_by_layer, self.recomputed_by_layer = {}, {}
        self.cache_bytes = self.cache_fp32_bytes = self.cache_bf16_bytes = None

    def add(self, layer: int, rows: int, recomputed: int) -> None:
        self.rows += rows
        self.recomputed_rows += recomputed
        self.rows_by_layer[layer] = self.rows_by_layer.get(layer, 0) + rows
        self.recomputed_by_layer[layer] = self.recomputed_by_layer.get(layer, 0) + recomputed

    @property
    def recompute_rate(self) -> float:
        """Share of rows recomputed with MSB+LSB (0 when nothing ran)."""
        return self.recomputed_rows / self.rows if self.rows else 0.0

    @property
    def key_bits_per_element(self) -> float:
        """Average key bits read per element: ``msb_bits + lsb_bits * recompute_rate``."""
        return self.msb_bits + self.lsb_bits * self.recompute_rate

    @property
    def recompute_rate_by_layer(self) -> dict:
        """``{layer: share of that layer's rows recomputed with MSB+LSB}``."""
        return {k: self.recomputed_by_layer.get(k, 0) / v for k, v in sorted(self.rows_by_layer.items()) if v}

    @property
    def key_bits_by_layer(self) -> dict:
        """``{layer: key bits read per element}`` (``msb_bits + lsb_bits * that layer's recompute rate``)."""
        return {k: self.msb_bits + self.lsb_bits * r for k, r in self.recompute_rate_by_layer.items()}

    @property
    def lsb_read_share(self) -> float:
        """Share of the stored LSB-plane bytes that were read (0 when none are stored)."""
        return self.lsb_bytes_read / self.lsb_bytes_stored if self.lsb_bytes_stored else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(recompute_rate=self.recompute_rate, key_bits_per_element=self.key_bits_per_element,
                 recompute_rate_by_layer=self.recompute_rate_by_layer, key_bits_by_layer=self.key_bits_by_layer,
                 lsb_read_share=self.lsb_read_share)
        return d

    def __repr__(self) -> str:
        cache = "" if self.cache_bytes is None else (
            f", cache {self.cache_bytes} B (fp32 {self.cache_fp32_bytes} B, bf16 {self.cache_bf16_bytes} B)")
        return (f"PQStats(recompute_rate={self.recompute_rate:.3f}, key_bits_per_element="
                f"{self.key_bits_per_element:.2f}, value_bits={self.value_bits}{cache})")
