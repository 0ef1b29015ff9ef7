"""The grouped low-bit KV cache layer (config ``layout="grouped"``, the default since config version 2).

Per layer, for ``[batch, kv_heads, time, head_dim]`` states (``D``: head_dim, ``G``: ``key_group``,
``g``: ``value_group``):

- keys, quantized **per channel** over groups of ``G`` consecutive tokens (KIVI: rotary models have
  large per-channel outliers in their keys), at ``msb_bits + lsb_bits`` bits on the MSB-aligned grid
  and split into two planes packed along the token axis: ``k_msb uint8 [B, H, Tk * msb / 8, D]``, ``k_lsb
  uint8 [B, H, Tk * lsb / 8, D]``, ``k_scale, k_zero float16 [B, H, Tk / G, D]``;
- values, quantized **per token** in groups of ``g`` channels along head_dim (after an orthonormal
  Hadamard rotation of head_dim with ``value_rotation``, undone when they are dequantized): ``v_codes uint8 [B, H,
  Tv * value_bits / 8, D]``, ``v_scale, v_zero float16 [B, H, Tv, D / g]``;
- a residual window in float16: ``k_res [B, H, T - Tk, D]`` (the newest ``residual_length`` tokens plus
  the tokens of the key group still being filled, fewer than ``G``), ``v_res [B, H, T - Tv, D]`` (the
  newest ``residual_length`` tokens).

``nbytes()`` is the sum of these tensors. Codes are packed ``8 / bits`` per byte along the token axis (byte
``[u, c]`` holds channel ``c`` of tokens ``k*u .. k*u + k - 1``, ``quant.pack_tokens``), so that a decode step
unpacks a plane with one shift and one mask over whole rows of ``D`` bytes (``quant.unpack_tokens``); key groups
and flushed value chunks are whole multiples of ``8 / bits`` tokens (``key_group`` is checked).

Compute views (``view_bytes()``, not part of ``nbytes``): the attention reads float32 copies of the
dequantized prefix (MSB-only keys, full keys where the recompute test can ask for them, values) and of
the residual window, kept in preallocated buffers that grow by doubling. Each quantized chunk is
dequantized once, when it enters the cache, so a decode step dequantizes nothing but its own token
(and, every ``G`` steps, one key group). With ``keep_views=False`` (the default) no view of the prefix is kept,
so the resident memory is the packed cache: a decode step reads the packed planes in the fused kernels of
``native.c`` (``attention.use_native``), and longer calls (or a machine without a C compiler) unpack the planes
(one shift and one mask per plane) and dequantize them into a transient float32 tensor. ``reference_*`` rebuild the same tensors from the packed
planes token by token (``quant.unpack_tokens_reference``, the slow reference the tests compare against).
"""
from __future__ import annotations

import torch

from slimkit.errors import ConfigError

from .config import LAYOUT_GROUPED
from .layer_base import PackedLayerBase
from .quant import pack_tokens, quantize_grouped, unpack_tokens, unpack_tokens_reference

STORE_DTYPE = torch.float16  # residual window


def check_dims(cfg, head_dim: int, value_dim: int | None = None) -> None:
    """ConfigError when the grouped layout cannot hold ``head_dim``-wide heads with ``cfg``."""
    value_dim = head_dim if value_dim is None else value_dim
    if cfg.layout != LAYOUT_GROUPED:
        return
    vg = value_group_for(cfg, value_dim)
    if value_dim % vg:
        raise ConfigError(f"value_group must divide head_dim: value_group={cfg.value_group} does not divide "
                          f"head_dim={value_dim}; use e.g. value_group={_divisor(value_dim)} (or 0 for whole heads)")
    if cfg.value_rotation and value_dim & (value_dim - 1):
        raise ConfigError(f"value_rotation needs a power-of-two head_dim (Hadamard rotation), got "
                          f"head_dim={value_dim}; use value_rotation=False")


def hadamard(d: int, device=None) -> torch.Tensor:
    """The orthonormal Sylvester-Hadamard matrix ``[d, d]`` (``d`` a power of two), float32, symmetric."""
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / h.shape[0] ** 0.5).to(device)


def value_group_for(cfg, value_dim: int) -> int:
    """Channels per value group: ``value_group``, or the whole head when it is 0 or at least ``value_dim``."""
    return value_dim if not cfg.value_group or cfg.value_group >= value_dim else cfg.value_group


def _divisor(d: int) -> int:
    return next((c for c in (64, 32, 16, 8) if d % c == 0), d)


class _Buffer:
    """A ``[B, H, capacity, D]`` float32 buffer filled along dim 2; ``view()`` is the filled part."""

    def __init__(self):
        self.data, self.used = None, 0

    def append(self, x: torch.Tensor) -> None:
        n = x.shape[2]
        if self.data is None or self.used + n > self.data.shape[2]:
            cap = max(2 * (self.data.shape[2] if self.data is not None else 0), self.used + n, 64)
            new = x.new_empty(*x.shape[:2], cap, x.shape[3])
            if self.used:
                new[:, :, :self.used] = self.data[:, :, :self.used]
            self.data = new
        self.data[:, :, self.used:self.used + n] = x
        self.used += n

    def drop_front(self, n: int) -> None:
        """Remove the ``n`` oldest entries (the residual window after a flush)."""
        if n:
            rest = self.data[:, :, n:self.used].clone()
            self.used = 0
            self.data = None
            if rest.shape[2]:
                self.append(rest)

    def view(self) -> torch.Tensor | None:
        return None if self.data is None else self.data[:, :, :self.used]

    def nbytes(self) -> int:
        return 0 if self.data is None else self.data.numel() * self.data.element_size()


class GroupedPQLayer(PackedLayerBase):
    """One layer of ``PQCache`` in the grouped layout (see the module docstring)."""

    is_sliding = False
    is_compileable = False
    is_croppable = True
    layout = LAYOUT_GROUPED
    _FIELDS = ("k_msb", "k_lsb", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero", "k_res", "v_res")

    def __init__(self, cfg, return_handles: bool = True):
        self.cfg = cfg
        self.msb_bits, self.lsb_bits, self.value_bits = cfg.msb_bits, cfg.lsb_bits, cfg.value_bits
        self.align_bits = cfg.align_bits
        self.return_handles = return_handles
        self.is_initialized = False
        self._clear()

    # -- state -------------------------------------------------------------------------------
    def _clear(self) -> None:
        for name in self._FIELDS:
            setattr(self, name, None)
        self.exact_states = None
        self.length = 0
        self._reset_views()

    def _reset_views(self) -> None:
        self._k_hi, self._k_full, self._v = _Buffer(), _Buffer(), _Buffer()
        self._k_res_f = self._v_res_f = None

    @property
    def k_len(self) -> int:
        """Tokens whose keys are quantized (a multiple of ``key_group``)."""
        return 0 if self.k_msb is None else self.k_msb.shape[2] * (8 // self.msb_bits)

    @property
    def v_len(self) -> int:
        """Tokens whose values are quantized."""
        return 0 if self.v_codes is None else self.v_codes.shape[2] * (8 // self.value_bits)

    @property
    def needs_hi_view(self) -> bool:
        """MSB-only keys are read unless every row is recomputed (``threshold >= 1``)."""
        return not (self.lsb_bits > 0 and self.cfg.threshold >= 1.0)

    @property
    def needs_full_view(self) -> bool:
        return self.lsb_bits > 0 and self.cfg.threshold > 0.0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.head_dim, self.value_dim = key_states.shape[-1], value_states.shape[-1]
        check_dims(self.cfg, self.head_dim, self.value_dim)
        self.value_group = value_group_for(self.cfg, self.value_dim)
        self.rotation = hadamard(self.value_dim, key_states.device) if self.cfg.value_rotation else None
        self.is_initialized = True

    # -- quantization of chunks -------------------------------------------------------------
    def _quantize_keys(self, k: torch.Tensor):
        """``k [B, H, n*G, D]`` float -> (msb plane, lsb plane, scale, zero, MSB-only fp32, full fp32)."""
        b, h, t, d = k.shape
        grp = self.cfg.key_group
        kb = self.msb_bits + self.lsb_bits
        x = k.float().reshape(b, h, t // grp, grp, d).transpose(-1, -2)          # [B, H, n, D, G]
        codes, scale, zero = quantize_grouped(x, kb, self.align_bits)
        codes = codes.transpose(-1, -2).reshape(b, h, t, d)
        scale, zero = scale.squeeze(-1), zero.squeeze(-1)                          # [B, H, n, D]
        msb, lsb = codes >> self.lsb_bits, codes & ((1 << self.lsb_bits) - 1)
        planes = (pack_tokens(msb, self.msb_bits),
                  pack_tokens(lsb, self.lsb_bits) if self.lsb_bits else msb.new_empty(b, h, 0, d))
        hi, full = self._dequantize_keys(msb, lsb, scale, zero)
        return (*planes, scale, zero, hi, full)

    def _dequantize_keys(self, msb, lsb, scale, zero):
        b, h, t, d = msb.shape
        n = t // self.cfg.key_group
        s, z = scale.float().unsqueeze(3), zero.float().unsqueeze(3)              # [B, H, n, 1, D]
        mid = ((1 << self.lsb_bits) - 1) / 2.0
        hi = full = None
        top = msb.float().view(b, h, n, -1, d) * float(1 << self.lsb_bits)
        if self.needs_hi_view:
            hi = ((top + mid) * s + z).view(b, h, t, d)
        if self.needs_full_view or not self.needs_hi_view:
            code = top + lsb.float().view(b, h, n, -1, d) if self.lsb_bits else top
            full = (code * s + z).view(b, h, t, d)
        return hi, full

    def _quantize_values(self, v: torch.Tensor):
        b, h, t, d = v.shape
        g = self.value_group
        x = v.float()
        if self.rotation is not None:  # spread outliers over the head before quantizing (QuaRot)
            x = torch.matmul(x, self.rotation)
        codes, scale, zero = quantize_grouped(x.reshape(b, h, t, d // g, g), self.value_bits)
        codes = codes.reshape(b, h, t, d)
        return pack_tokens(codes, self.value_bits), scale.squeeze(-1), zero.squeeze(-1), \
            self._dequantize_values(codes, scale.squeeze(-1), zero.squeeze(-1))

    def _dequantize_values(self, codes, scale, zero):
        b, h, t, d = codes.shape
        g = self.value_group
        x = codes.float().reshape(b, h, t, d // g, g) * scale.float()[..., None] + zero.float()[..., None]
        x = x.reshape(b, h, t, d)
        if self.rotation is not None:  # the rotation is orthonormal and symmetric: its own inverse
            x = torch.matmul(x, self.rotation)
        return x

    @staticmethod
    def _cat(old, new):
        return new if old is None else torch.cat([old, new], dim=2)

    # -- CacheLayerMixin ---------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``[B, H, T_new, D]`` states, quantize what left the residual window, return handles."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[2]
        # the prefill (several tokens into an empty layer) may attend to its own float states
        self.exact_states = (key_states, value_states) if (
            self.cfg.exact_prefill and self.length == 0 and n > 1 and self.return_handles) else None
        k16, v16 = key_states.to(STORE_DTYPE), value_states.to(STORE_DTYPE)
        self.k_res, self.v_res = self._cat(self.k_res, k16), self._cat(self.v_res, v16)
        self._k_res_f = self._cat(self._k_res_f, k16.float())
        self._v_res_f = self._cat(self._v_res_f, v16.float())
        self.length += n
        self._flush()
        return self.update_result(key_states, value_states)

    def _flush(self) -> None:
        """Quantize the residual tokens beyond ``residual_length``, whole groups of ``key_group`` tokens."""
        r, grp = self.cfg.residual_length, self.cfg.key_group
        nk = (self.k_res.shape[2] - r) // grp * grp
        if nk > 0:
            msb, lsb, ks, kz, hi, full = self._quantize_keys(self._k_res_f[:, :, :nk])
            self.k_msb, self.k_lsb = self._cat(self.k_msb, msb), self._cat(self.k_lsb, lsb)
            self.k_scale, self.k_zero = self._cat(self.k_scale, ks), self._cat(self.k_zero, kz)
            if self.cfg.keep_views:
                if hi is not None:
                    self._k_hi.append(hi)
                if full is not None:
                    self._k_full.append(full)
            self.k_res, self._k_res_f = self.k_res[:, :, nk:], self._k_res_f[:, :, nk:]
        nv = (self.v_res.shape[2] - r) // grp * grp  # values leave the window with the keys' groups
        if nv > 0:
            codes, vs, vz, deq = self._quantize_values(self._v_res_f[:, :, :nv])
            self.v_codes = self._cat(self.v_codes, codes)
            self.v_scale, self.v_zero = self._cat(self.v_scale, vs), self._cat(self.v_zero, vz)
            if self.cfg.keep_views:
                self._v.append(deq)
            self.v_res, self._v_res_f = self.v_res[:, :, nv:], self._v_res_f[:, :, nv:]


    # -- batch and token edits ---------------------------------------------------------------
    def _apply(self, fn) -> None:
        if not self.length:
            return
        for name in self._FIELDS:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, fn(t))
        self._rebuild_views()

    def _rebuild_views(self) -> None:
        """Recompute the float32 views from the stored tensors (after batch edits)."""
        self._reset_views()
        self._k_res_f, self._v_res_f = self.k_res.float(), self.v_res.float()
        if not self.cfg.keep_views:
            return
        if self.k_msb is not None and self.k_len:
            hi, full = self._dequantize_keys(*self.reference_key_planes(), self.k_scale, self.k_zero)
            if hi is not None:
                self._k_hi.append(hi)
            if full is not None:
                self._k_full.append(full)
        if self.v_codes is not None and self.v_len:
            self._v.append(self._dequantize_values(unpack_tokens(self.v_codes, self.value_bits),
                                                   self.v_scale, self.v_zero))


    def _requantize(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Refill the layer from float states (token edits break key groups: quantized again, lossy)."""
        handles = self.return_handles
        self._clear()
        self.return_handles = False
        self.update(keys, values)
        self.return_handles = handles

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("GroupedPQLayer.crop takes a negative number of tokens to remove")
        if tokens_to_remove == 0 or not self.length:
            return
        k, v = self.dequantized_keys(), self.dequantized_values()
        self._requantize(k[:, :, :tokens_to_remove], v[:, :, :tokens_to_remove])

    def select_tokens(self, index: torch.Tensor) -> None:
        """Keep only the tokens ``index`` (``[T_keep]`` or ``[B, H or 1, T_keep]``); the kept keys are
        quantized again in new groups (token eviction, e.g. spatten)."""
        if not self.length:
            return
        k, v = self.dequantized_keys(), self.dequantized_values()
        if index.dim() == 1:
            idx = index.to(k.device)
            k, v = k.index_select(2, idx), v.index_select(2, idx)
        else:
            b, h = k.shape[:2]
            idx = index.to(k.device)
            if idx.dim() == 2:
                idx = idx[:, None]
            idx = idx.expand(b, h, idx.shape[-1])
            k = torch.gather(k, 2, idx[..., None].expand(-1, -1, -1, k.shape[-1]))
            v = torch.gather(v, 2, idx[..., None].expand(-1, -1, -1, v.shape[-1]))
        self._requantize(k, v)

    # -- reading -----------------------------------------------------------------------------
    def key_views(self):
        """``(MSB-only keys or None, full keys or None, residual keys)`` float32: views of the buffers, or
        with ``keep_views=False`` dequantized now from the packed planes (``key_planes``). Attention does not
        need them in packed mode (``attention.attend_grouped`` reads the planes)."""
        if self.cfg.keep_views or not self.k_len:
            return self._k_hi.view(), self._k_full.view(), self._k_res_f
        hi, full = self._dequantize_keys(*self.key_planes(), self.k_scale, self.k_zero)
        return hi, full, self._k_res_f

    def value_views(self):
        """``(quantized values, residual values)`` float32, dequantized now in packed mode (``value_codes``)."""
        if self.cfg.keep_views or not self.v_len:
            return self._v.view(), self._v_res_f
        return self._dequantize_values(self.value_codes(), self.v_scale, self.v_zero), self._v_res_f

    def residual_views(self):
        """``(keys, values)`` float32 ``[B, H, n, D]`` of the newest tokens kept unquantized."""
        return self._k_res_f, self._v_res_f

    def key_planes(self):
        """Packed mode (``keep_views=False``): ``(msb codes, lsb codes or None)``, ``uint8 [B, H, Tk, D]``, of the
        quantized keys, unpacked once (keys are ``(msb * 2**lsb_bits + lsb) * scale + zero`` per group of
        ``key_group`` tokens and channel); the LSB plane only where rows may be recomputed."""
        msb = unpack_tokens(self.k_msb, self.msb_bits)
        lsb = unpack_tokens(self.k_lsb, self.lsb_bits) if self.lsb_bits and self.needs_full_view else None
        return msb, lsb

    def value_codes(self) -> torch.Tensor:
        """Packed mode: the quantized values' float codes ``[B, H, Tv, D]`` (in the rotated basis with
        ``value_rotation``): values are ``(codes * scale + zero) @ rotation`` per token and group of channels."""
        return unpack_tokens(self.v_codes, self.value_bits).float()

    def reference_key_planes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """MSB and LSB codes ``int64 [B, H, Tk, D]`` read token by token (``quant.unpack_tokens_reference``)."""
        msb = unpack_tokens_reference(self.k_msb, self.msb_bits)
        lsb = unpack_tokens_reference(self.k_lsb, self.lsb_bits) if self.lsb_bits else torch.zeros_like(msb)
        return msb, lsb

    def reference_keys(self, full: bool = True) -> torch.Tensor:
        """Keys ``[B, H, T, D]`` float32 from the packed planes and the residual (MSB-only when ``full=False``)."""
        parts = []
        if self.k_len:
            msb, lsb = self.reference_key_planes()
            s = self.k_scale.float().repeat_interleave(self.cfg.key_group, dim=2)
            z = self.k_zero.float().repeat_interleave(self.cfg.key_group, dim=2)
            if full or not self.lsb_bits:
                code = (msb << self.lsb_bits | lsb).float()
            else:
                code = (msb << self.lsb_bits).float() + ((1 << self.lsb_bits) - 1) / 2.0
            parts.append(code * s + z)
        parts.append(self.k_res.float())
        return torch.cat(parts, dim=2)

    def reference_values(self) -> torch.Tensor:
        parts = []
        if self.v_len:
            parts.append(self._dequantize_values(unpack_tokens_reference(self.v_codes, self.value_bits),
                                                 self.v_scale, self.v_zero))
        parts.append(self.v_res.float())
        return torch.cat(parts, dim=2)

    def dequantized_keys(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.reference_keys().to(dtype or self.dtype)

    def dequantized_values(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.reference_values().to(dtype or self.dtype)

    @property
    def keys(self) -> torch.Tensor | None:
        return self.dequantized_keys() if self.length else None

    @property
    def values(self) -> torch.Tensor | None:
        return self.dequantized_values() if self.length else None

    def lsb_bytes(self, b_idx: torch.Tensor | None = None, h_idx: torch.Tensor | None = None) -> int:
        """Bytes of the LSB plane of all (batch, head) pairs, or of the pairs ``(b_idx[i], h_idx[i])``."""
        if self.k_lsb is None:
            return 0
        per_pair = self.k_lsb.shape[2] * self.k_lsb.shape[3]
        return per_pair * (self.k_lsb.shape[0] * self.k_lsb.shape[1] if b_idx is None else int(b_idx.numel()))

    def nbytes(self) -> int:
        """Bytes of the stored tensors: packed planes, float16 scales and zeros, float16 residual window."""
        return sum(t.numel() * t.element_size() for t in (getattr(self, n) for n in self._FIELDS) if t is not None)

    def view_bytes(self) -> int:
        """Bytes of the float32 compute views (buffers at their capacity), not counted in ``nbytes``."""
        res = sum(t.numel() * t.element_size() for t in (self._k_res_f, self._v_res_f) if t is not None)
        return self._k_hi.nbytes() + self._k_full.nbytes() + self._v.nbytes() + res

    def plain_bytes(self, dtype: torch.dtype) -> int:
        if not self.length:
            return 0
        b, h = self.k_res.shape[:2]
        return b * h * self.length * (self.head_dim + self.value_dim) * torch.empty((), dtype=dtype).element_size()
