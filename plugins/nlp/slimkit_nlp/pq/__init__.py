"""SpAtten progressive quantization of attention inputs, with a packed low-bit KV cache.

    model = slimkit.apply(model, "progressive-quant")   # 2+2-bit keys, 4-bit values, grouped layout
    model.generate(ids, max_new_tokens=32)      # uses PQCache (packed integer planes)
    pq_stats(model)                             # recompute rate and key bits read (per layer), cache bytes
    slimkit.apply(model, "progressive-quant", layout="token", msb_bits=6, lsb_bits=4, threshold=0.1,
                  value_bits=8)                 # the version-1 per-token layout, any bit width

Names are imported lazily, so registering the technique (``slimkit plugins``) does not import
transformers.
"""
from slimkit.parts import lazy_exports

_EXPORTS = {
    "PackedKV": ".cache", "PQCache": ".cache", "PQLayer": ".cache", "GroupedPQLayer": ".grouped",
    "ProgressiveQuantConfig": ".config",
    "dequantize": ".quant", "dequantize_msb": ".quant", "join_planes": ".quant", "pack": ".quant",
    "quantize": ".quant", "split_planes": ".quant", "unpack": ".quant", "pack_fast": ".quant", "unpack_fast": ".quant",
    "PQStats": ".stats",
    "apply_progressive_quant": ".transform", "pq_stats": ".transform", "runtime_of": ".state",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
