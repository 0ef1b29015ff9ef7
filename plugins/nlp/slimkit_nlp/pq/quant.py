"""Integer quantization, MSB/LSB bit-plane split and bit packing.

Every tensor is quantized per row over its last dimension (for attention inputs
``[batch, heads, time, head_dim]``: one scale and zero point per head and token) with
``x ~ code * scale + zero``, ``code`` in ``[0, 2**bits - 1]``. Scale and zero (the row minimum)
are stored as float16, rounded outwards (zero down, scale up) and used as rounded by the
quantizer, so the codes always cover the row and dequantization agrees bit for bit
wherever it is computed.
"""
from __future__ import annotations

import torch

SCALE_DTYPE = torch.float16


def _round(x: torch.Tensor, up: bool) -> torch.Tensor:
    """``x`` (float32) to ``SCALE_DTYPE``, rounded up or down instead of to nearest."""
    r = x.clamp(-60000.0, 60000.0).to(SCALE_DTYPE)
    bad = r.float() < x if up else r.float() > x
    toward = torch.full_like(r, float("inf") if up else float("-inf"))
    return torch.where(bad, torch.nextafter(r, toward), r)


def quantize(x: torch.Tensor, bits: int, lsb_bits: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [..., D]`` -> ``(codes int32 [..., D], scale fp16 [..., 1], zero fp16 [..., 1])``.

    One-shot ``bits``-bit quantization. With ``lsb_bits = 0`` the grid runs from the row
    minimum to its maximum (``scale = range / (2**bits - 1)``). With ``lsb_bits > 0`` the grid
    is *MSB-aligned*: ``scale = range / ((2**msb - 1) * 2**lsb)`` (``msb = bits - lsb``) and
    ``zero`` sits half an LSB range below the minimum, so that the centres of the MSB buckets
    (``dequantize_msb``) fall exactly on the static ``msb``-bit grid from minimum to maximum:
    the MSB plane alone is as good as static ``msb``-bit quantization, and MSB+LSB refines it
    to a step only ``1 + 2**-msb`` times the plain ``bits``-bit step.
    """
    xf = x.float()
    lo = xf.amin(-1, keepdim=True)
    hi = xf.amax(-1, keepdim=True)
    levels = (1 << bits) - 1
    msb_levels = (1 << (bits - lsb_bits)) - 1
    half = ((1 << lsb_bits) - 1) / 2.0  # the row min sits at code `half`, the max at `top`
    top = (msb_levels << lsb_bits) + half
    step = ((hi - lo) / (msb_levels << lsb_bits)).clamp_min(1e-6)
    zero = _round(lo - half * step, up=False)
    scale = _round(((hi - zero.float()) / top).clamp_min(1e-6), up=True)  # after rounding zero
    codes = torch.round((xf - zero.float()) / scale.float()).clamp_(0, levels).to(torch.int32)
    return codes, scale, zero


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Full-precision reconstruction ``codes * scale + zero``."""
    return (codes.float() * scale.float() + zero.float()).to(dtype)


def split_planes(codes: torch.Tensor, lsb_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``codes`` at ``msb+lsb`` bits -> ``(msb = codes >> lsb, lsb = codes & (2**lsb - 1))``."""
    return codes >> lsb_bits, codes & ((1 << lsb_bits) - 1)


def join_planes(msb: torch.Tensor, lsb: torch.Tensor, lsb_bits: int) -> torch.Tensor:
    """Inverse of ``split_planes``: ``(msb << lsb_bits) | lsb``."""
    return (msb.to(torch.int32) << lsb_bits) | lsb.to(torch.int32)


def dequantize_msb(msb: torch.Tensor, lsb_bits: int, scale: torch.Tensor, zero: torch.Tensor,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reconstruction from the MSB plane alone: the unknown LSBs are taken at the middle of
    their range, ``(msb << lsb) + (2**lsb - 1) / 2`` (error at most half an MSB step).
    With ``lsb_bits=0`` this equals ``dequantize``."""
    code = (msb.to(torch.int32) << lsb_bits).float() + ((1 << lsb_bits) - 1) / 2.0
    return (code * scale.float() + zero.float()).to(dtype)


# -- packing ----------------------------------------------------------------------------------
def packed_width(dim: int, bits: int) -> int:
    """Bytes per row of ``dim`` codes at ``bits`` bits (sub-byte widths pad rows to 8 codes)."""
    if bits == 0:
        return 0
    if bits > 8:
        return packed_width(dim, 8) + packed_width(dim, bits - 8)
    if bits == 8:
        return dim
    return (dim + 7) // 8 * bits


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``codes [..., D]`` (values < 2**bits) into ``uint8 [..., ceil(D/8) * bits]``.

    Every group of 8 codes becomes ``bits`` bytes (little-endian bit stream), e.g. two
    4-bit codes per byte, four 6-bit codes in three bytes. Widths above 8 store the low
    byte and then the high ``bits - 8`` bits packed the same way.
    """
    if bits == 0:
        return torch.empty(*codes.shape[:-1], 0, dtype=torch.uint8, device=codes.device)
    if bits > 8:
        return torch.cat([pack(codes & 0xFF, 8), pack(codes >> 8, bits - 8)], dim=-1)
    if bits == 8:
        return codes.to(torch.uint8)
    *lead, d = codes.shape
    g = (d + 7) // 8
    if g * 8 != d:
        codes = torch.nn.functional.pad(codes, (0, g * 8 - d))
    shifts = torch.arange(8, device=codes.device, dtype=torch.int64) * bits
    words = (codes.reshape(*lead, g, 8).to(torch.int64) << shifts).sum(-1, keepdim=True)  # disjoint bits
    return words.view(torch.uint8).reshape(*lead, g, 8)[..., :bits].reshape(*lead, g * bits)


def unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of ``pack``: ``uint8 [..., ceil(dim/8) * bits]`` -> ``int32 [..., dim]``."""
    if bits == 0:
        return torch.zeros(*packed.shape[:-1], dim, dtype=torch.int32, device=packed.device)
    if bits > 8:
        low = unpack(packed[..., :packed_width(dim, 8)], 8, dim)
        high = unpack(packed[..., packed_width(dim, 8):], bits - 8, dim)
        return low | (high << 8)
    if bits == 8:
        return packed[..., :dim].to(torch.int32)
    return unpack_uint8(packed, bits, dim).to(torch.int32)


def unpack_uint8(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """``unpack`` for ``bits < 8`` returning ``uint8`` codes, with byte arithmetic only (fast path)."""
    *lead, _ = packed.shape
    g = (dim + 7) // 8
    b = packed.reshape(*lead, g, bits)
    if bits == 4:
        out = torch.stack([b & 15, b >> 4], -1)
    else:
        mask = (1 << bits) - 1
        parts = []
        for i in range(8):
            k, sh = divmod(bits * i, 8)
            v = b[..., k] >> sh
            if sh + bits > 8:
                v = v | (b[..., k + 1] << (8 - sh))
            parts.append(v & mask)
        out = torch.stack(parts, -1)
    return out.reshape(*lead, g * 8)[..., :dim]


# -- grouped layout (config ``layout="grouped"``): widths that divide 8, one expression each way --
FAST_BITS = (1, 2, 4, 8)


def pack_fast(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``codes [..., D]`` (values < 2**bits, ``bits`` in 1, 2, 4, 8) into ``uint8 [..., D * bits / 8]``:
    ``8 / bits`` codes per byte, the first in the lowest bits (4-bit: same bytes as ``pack``)."""
    if bits == 8:
        return codes.to(torch.uint8)
    per = 8 // bits
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    c = codes.to(torch.uint8).unflatten(-1, (-1, per)) << shifts
    return c.sum(-1, dtype=torch.uint8) if per > 1 else c[..., 0]  # disjoint bits: the sum is an OR


def unpack_fast(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of ``pack_fast``: ``uint8 [..., W]`` -> ``uint8 codes [..., W * 8 / bits]`` (one shift-and-mask)."""
    if bits == 8:
        return packed
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).flatten(-2)


def pack_tokens(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``codes [..., T, D]`` (values < 2**bits, ``bits`` in 1, 2, 4, 8; ``T`` a multiple of ``k = 8 / bits``)
    along the token axis into ``uint8 [..., T / k, D]``: byte ``[..., u, c]`` holds channel ``c`` of tokens
    ``k*u .. k*u + k - 1``, token ``k*u + i`` in bits ``bits*i .. bits*i + bits - 1`` (the first token lowest).

    Packing along tokens rather than channels lets ``unpack_tokens`` broadcast its shifts over whole rows of
    ``D`` bytes, which vectorizes on CPUs (a shift over a short last dimension of 4 codes does not)."""
    if bits == 8:
        return codes.to(torch.uint8)
    k = 8 // bits
    if codes.shape[-2] % k:
        raise ValueError(f"pack_tokens needs a multiple of {k} tokens for {bits}-bit codes, got {codes.shape[-2]}")
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device).view(k, 1)
    c = codes.to(torch.uint8).unflatten(-2, (-1, k)) << shifts                   # [..., T / k, k, D]
    return c.sum(-2, dtype=torch.uint8)                                            # disjoint bits: the sum is an OR


def unpack_tokens(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of ``pack_tokens``: ``uint8 [..., T / k, D]`` -> ``uint8 codes [..., T, D]``, one shift and one
    mask broadcast over rows of ``D`` bytes (``unpack_tokens_reference`` is the loop it must equal)."""
    if bits == 8:
        return packed
    return ((packed.unsqueeze(-2) >> _token_shifts(bits, packed.device)) & ((1 << bits) - 1)).flatten(-3, -2)


_SHIFTS: dict = {}


def _token_shifts(bits: int, device) -> torch.Tensor:
    """``uint8 [8 / bits, 1]``: the bit offset of each token in a byte (made once per width and device)."""
    key = (bits, str(device))
    if key not in _SHIFTS:
        _SHIFTS[key] = torch.arange(0, 8, bits, dtype=torch.uint8, device=device).view(8 // bits, 1)
    return _SHIFTS[key]


def unpack_tokens_reference(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """``unpack_tokens`` written token by token from the definition in ``pack_tokens`` -> ``int64 [..., T, D]``."""
    k = 8 // bits
    rows = []
    for u in range(packed.shape[-2]):
        byte = packed[..., u, :].long()
        rows += [(byte >> (bits * i)) % (1 << bits) for i in range(k)]
    return torch.stack(rows, -2) if rows else packed.new_zeros(*packed.shape[:-2], 0, packed.shape[-1]).long()


def quantize_grouped(x: torch.Tensor, bits: int, lsb_bits: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``quantize`` over the last dimension of ``x [..., G]`` (callers move the group there), codes as ``uint8``
    when ``bits <= 8``."""
    codes, scale, zero = quantize(x, bits, lsb_bits)
    return (codes.to(torch.uint8) if bits <= 8 else codes), scale, zero
