"""SpAtten progressive quantization of attention inputs, with a packed low-bit KV cache.

    model = slimkit.apply(model, "progressive-quant", msb_bits=6, lsb_bits=4, threshold=0.1, value_bits=8)
    model(**inputs); pq_stats(model)            # recompute rate, key bits read, cache bytes
    model.generate(ids, max_new_tokens=32)      # uses PQCache (packed integer planes)
"""
from .cache import PackedKV, PQCache, PQLayer
from .config import ProgressiveQuantConfig
from .quant import dequantize, dequantize_msb, join_planes, pack, quantize, split_planes, unpack
from .stats import PQStats
from .transform import apply_progressive_quant, pq_stats, runtime_of

__all__ = ["ProgressiveQuantConfig", "PQCache", "PQLayer", "PackedKV", "PQStats", "apply_progressive_quant",
           "pq_stats", "runtime_of", "quantize", "dequantize", "dequantize_msb", "split_planes", "join_planes",
           "pack", "unpack"]
