"""SpAtten progressive quantization of attention inputs, with a packed low-bit KV cache.

    model = slimkit.apply(model, "progressive-quant", msb_bits=6, lsb_bits=4, threshold=0.1, value_bits=8)
    model(**inputs); pq_stats(model)            # recompute rate, key bits read, cache bytes
    model.generate(ids, max_new_tokens=32)      # uses PQCache (packed integer planes)

Names are imported lazily, so registering the technique (``slimkit plugins``) does not import
transformers.
"""
import importlib

_EXPORTS = {
    "PackedKV": "cache", "PQCache": "cache", "PQLayer": "cache",
    "ProgressiveQuantConfig": "config",
    "dequantize": "quant", "dequantize_msb": "quant", "join_planes": "quant", "pack": "quant",
    "quantize": "quant", "split_planes": "quant", "unpack": "quant",
    "PQStats": "stats",
    "apply_progressive_quant": "transform", "pq_stats": "transform", "runtime_of": "transform",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
