"""A low-bit KV cache for ``model.generate()``: keys as packed MSB and LSB planes, values packed.

Per layer, for ``[batch, kv_heads, time, head_dim]`` states:

- ``k_msb``: ``uint8 [B, H, T, ceil(D/8) * msb_bits]`` (packed MSB plane),
- ``k_lsb``: ``uint8 [B, H, T, ceil(D/8) * lsb_bits]`` (packed LSB plane, read only for the
  (batch, head) pairs whose rows need recomputation),
- ``v_codes``: ``uint8 [B, H, T, ceil(D/8) * value_bits]``,
- ``k_scale, k_zero, v_scale, v_zero``: ``float16 [B, H, T, 1]``.

When the model runs the ``slimkit_pq`` attention, ``update`` returns ``PackedKV`` handles
(no full-precision copy is made); the attention function reads the planes itself. With any
other attention implementation it returns dequantized tensors, like a plain quantized cache.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from .config import GRID_MSB, LAYOUT_GROUPED
from .handles import PackedKV  # noqa: F401  (re-exported from its former home)
from .layer_base import PackedLayerBase
from .quant import dequantize, join_planes, pack, quantize, split_planes, unpack, unpack_uint8
from .state import ATTENTION_NAME


def _unpack_fast(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    if bits < 8:
        return unpack_uint8(packed, bits, dim)
    if bits == 8:
        return packed[..., :dim]
    return unpack(packed, bits, dim)

class PQLayer(PackedLayerBase):
    """One layer of ``PQCache`` (see the module docstring for the stored tensors)."""

    is_sliding = False
    is_compileable = False
    is_croppable = True

    def __init__(self, msb_bits: int, lsb_bits: int, value_bits: int, return_handles: bool = True,
                 grid: str = GRID_MSB):
        self.is_initialized = False
        self.msb_bits, self.lsb_bits, self.value_bits = msb_bits, lsb_bits, value_bits
        self.align_bits = lsb_bits if grid == GRID_MSB else 0
        self.return_handles = return_handles
        self.length = 0
        self._clear()

    def _clear(self) -> None:
        self.k_msb = self.k_lsb = self.k_scale = self.k_zero = None
        self.v_codes = self.v_scale = self.v_zero = None
        self.length = 0

    _FIELDS = ("k_msb", "k_lsb", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero")

    def _apply(self, fn) -> None:
        if self.k_msb is None:
            return
        for name in self._FIELDS:
            setattr(self, name, fn(getattr(self, name)))

    # -- CacheLayerMixin ---------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.head_dim = key_states.shape[-1]
        self.value_dim = value_states.shape[-1]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Quantize and append ``[B, H, T_new, D]`` states; return handles (or dequantized states)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        kb = self.msb_bits + self.lsb_bits
        codes, ks, kz = quantize(key_states, kb, self.align_bits)
        msb, lsb = split_planes(codes, self.lsb_bits)
        vcodes, vs, vz = quantize(value_states, self.value_bits)
        new = dict(k_msb=pack(msb, self.msb_bits), k_lsb=pack(lsb, self.lsb_bits), k_scale=ks, k_zero=kz,
                   v_codes=pack(vcodes, self.value_bits), v_scale=vs, v_zero=vz)
        for name, t in new.items():
            old = getattr(self, name)
            setattr(self, name, t if old is None else torch.cat([old, t], dim=-2))
        self.length += key_states.shape[-2]
        return self.update_result(key_states, value_states)



    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("PQLayer.crop takes a negative number of tokens to remove")
        if tokens_to_remove == 0 or self.k_msb is None:
            return
        self._apply(lambda t: t[..., :tokens_to_remove, :])
        self.length += tokens_to_remove

    def select_tokens(self, index: torch.Tensor) -> None:
        """Keep only the tokens ``index`` (``[T_keep]`` or ``[B, H or 1, T_keep]``, positions in the cache)."""
        if self.k_msb is None:
            return
        if index.dim() == 1:
            self._apply(lambda t: t.index_select(-2, index.to(t.device)))
            self.length = int(index.numel())
        else:
            b, h = self.k_msb.shape[:2]
            idx = index.to(self.k_msb.device)
            if idx.dim() == 2:
                idx = idx[:, None]
            idx = idx.expand(b, h, idx.shape[-1])
            self._apply(lambda t: torch.gather(t, 2, idx[..., None].expand(b, h, idx.shape[-1], t.shape[-1])))
            self.length = int(idx.shape[-1])

    # -- reading -----------------------------------------------------------------------------
    @property
    def keys(self) -> torch.Tensor | None:
        """Dequantized keys ``[B, H, T, D]`` (MSB+LSB; for inspection, the attention reads planes)."""
        return None if self.k_msb is None else self.dequantized_keys()

    @property
    def values(self) -> torch.Tensor | None:
        return None if self.k_msb is None else self.dequantized_values()

    def msb_plane(self) -> torch.Tensor:
        """MSB plane ``[B, H, T, D]`` as stored integers (``uint8`` up to 8 bits), read in one pass."""
        return _unpack_fast(self.k_msb, self.msb_bits, self.head_dim)

    def lsb_plane(self) -> torch.Tensor:
        """The whole LSB plane ``[B, H, T, D]`` (``uint8`` up to 8 bits)."""
        return _unpack_fast(self.k_lsb, self.lsb_bits, self.head_dim)

    def value_plane(self) -> torch.Tensor:
        """Value codes ``[B, H, T, Dv]`` (``uint8`` up to 8 bits)."""
        return _unpack_fast(self.v_codes, self.value_bits, self.value_dim)

    def msb_codes(self) -> torch.Tensor:
        """MSB plane as ``int32 [B, H, T, D]`` (reads only the MSB bytes)."""
        return unpack(self.k_msb, self.msb_bits, self.head_dim)

    def key_codes(self) -> torch.Tensor:
        """Full ``msb+lsb``-bit key codes ``int32 [B, H, T, D]`` (reads both planes)."""
        return join_planes(self.msb_codes(), unpack(self.k_lsb, self.lsb_bits, self.head_dim), self.lsb_bits)

    def lsb_codes(self, b_idx: torch.Tensor, h_idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        """LSB plane of the (batch, head) pairs ``(b_idx[i], h_idx[i])`` only: ``(int32 [n, T, D], bytes read)``."""
        packed = self.k_lsb[b_idx, h_idx]
        return _unpack_fast(packed, self.lsb_bits, self.head_dim), packed.numel()

    def dequantized_keys(self) -> torch.Tensor:
        return dequantize(self.key_codes(), self.k_scale, self.k_zero, self.dtype)

    def dequantized_values(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        codes = unpack(self.v_codes, self.value_bits, self.value_dim)
        return dequantize(codes, self.v_scale, self.v_zero, dtype or self.dtype)

    def nbytes(self) -> int:
        if self.k_msb is None:
            return 0
        return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in self._FIELDS)

    def plain_bytes(self, dtype: torch.dtype) -> int:
        """Bytes a plain cache of ``dtype`` would hold for the same tokens (keys and values)."""
        if self.k_msb is None:
            return 0
        b, h, t = self.k_msb.shape[:3]
        return b * h * t * (self.head_dim + self.value_dim) * torch.empty((), dtype=dtype).element_size()


class PQCache(Cache):
    """Packed low-bit KV cache (see the module docstring, and ``grouped.py`` for the default layout).

    ``PQCache(model)`` takes its settings from the ``progressive-quant`` config applied to
    ``model``; or give a ``config`` (a ``ProgressiveQuantConfig``) and/or single fields as
    keywords (``msb_bits=2, value_bits=4, layout="token"`` ...), which override it, plus
    ``num_layers``. ``model.generate(ids, cache=PQCache(model))`` (``past_key_values=`` before
    transformers 5.24); after ``progressive-quant`` with ``cache=True`` (default) generate uses one
    by itself.
    """

    def __init__(self, model=None, *, config=None, num_layers: int | None = None,
                 return_handles: bool | None = None, **fields):
        import dataclasses

        from .config import ProgressiveQuantConfig

        cfg = config
        if model is not None:
            from .state import runtime_of
            rt = runtime_of(model)
            if cfg is None and rt is not None:
                cfg = rt.config
            if num_layers is None:
                text_cfg = model.config.get_text_config(decoder=True)
                num_layers = getattr(text_cfg, "num_hidden_layers", None)
            if return_handles is None:
                return_handles = rt is not None and model.config._attn_implementation == ATTENTION_NAME
        fields = {k: v for k, v in fields.items() if v is not None}
        if cfg is None:
            cfg = ProgressiveQuantConfig(**fields)  # validates
        elif fields:
            cfg = dataclasses.replace(cfg, **fields)  # validates
        self.config = cfg
        self.msb_bits, self.lsb_bits, self.value_bits = cfg.msb_bits, cfg.lsb_bits, cfg.value_bits
        handles = bool(return_handles)

        if cfg.layout == LAYOUT_GROUPED:
            from .grouped import GroupedPQLayer

            def make():
                return GroupedPQLayer(cfg, return_handles=handles)
        else:
            def make():
                return PQLayer(cfg.msb_bits, cfg.lsb_bits, cfg.value_bits, return_handles=handles, grid=cfg.grid)

        if num_layers:
            super().__init__(layers=[make() for _ in range(num_layers)])
        else:
            super().__init__(layer_class_to_replicate=make)

    def select_tokens(self, layer_idx: int, index: torch.Tensor) -> None:
        """Keep only the cached tokens ``index`` (``(B, n)`` slots) of layer ``layer_idx`` (token eviction)."""
        self.layers[layer_idx].select_tokens(index)

    def nbytes(self) -> int:
        """Bytes held by all layers (packed planes, scales and zero points)."""
        return sum(layer.nbytes() for layer in self.layers)

    def plain_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes a plain (DynamicCache) cache of ``dtype`` would hold for the same tokens."""
        return sum(layer.plain_bytes(dtype) for layer in self.layers)

    def view_bytes(self) -> int:
        """Bytes of the float32 compute views of the grouped layout (0 for the token layout)."""
        return sum(layer.view_bytes() for layer in self.layers if hasattr(layer, "view_bytes"))
