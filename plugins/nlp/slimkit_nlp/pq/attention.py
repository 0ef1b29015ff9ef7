"""The ``slimkit_pq`` attention function (registered in ``transformers.AttentionInterface``).

Same call and return convention as the eager attention of transformers 5:
``fn(module, query [B, H, Lq, D], key [B, Hkv, Lk, D], value, attention_mask, scaling, dropout)``
-> ``(output [B, Lq, H, D], probabilities [B, H, Lq, Lk])``; the probabilities are returned
(like eager) so that other techniques (``spatten``) can read them.

Keys (and queries when ``Lq > 1``, i.e. encoders and the prefill) are quantized per head and
token at ``msb+lsb`` bits; probabilities come from the MSB planes; rows whose largest
probability is under the threshold (or, with ``criterion="expected_kl"``, whose estimated KL
divergence from the exact row is above ``kl_threshold``) are recomputed from MSB+LSB; values
use ``value_bits``.
Modules without progressive-quant state (e.g. cross-attention) run plain eager attention.
"""
from __future__ import annotations

from contextvars import ContextVar

import torch
from torch import nn

from . import native
from .config import CRITERION_EXPECTED_KL, CRITERION_MAX_PROB, LAYOUT_GROUPED
from .quant import dequantize, dequantize_msb, quantize, split_planes
from .state import ATTENTION_NAME as NAME
from .state import layer_index_of, runtime_of


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, Hkv, T, D]`` -> ``[B, Hkv * groups, T, D]`` (grouped-query attention)."""
    return x if groups == 1 else torch.repeat_interleave(x, groups, dim=1)


#: the calling layer's attention logit soft-cap (Gemma 2: ``cap * tanh(s / cap)``), set per call
_SOFTCAP: ContextVar[float | None] = ContextVar("slimkit_pq_softcap", default=None)


def _scale(s: torch.Tensor, scaling: float) -> torch.Tensor:
    """Scaled attention logits, soft-capped where the calling layer caps them."""
    s = s * scaling
    cap = _SOFTCAP.get()
    return s if not cap else cap * torch.tanh(s / cap)


def _softmax(q: torch.Tensor, k: torch.Tensor, scaling: float, mask: torch.Tensor | None) -> torch.Tensor:
    s = _scale(torch.matmul(q, k.transpose(-1, -2)), scaling)
    if mask is not None:
        s = s + mask[..., : k.shape[-2]].to(s.dtype)
    return torch.softmax(s, dim=-1)


def expected_msb_kl(p: torch.Tensor, q: torch.Tensor, k_scale: torch.Tensor, scaling: float, lsb_bits: int,
                    q_scale: torch.Tensor | None = None, k_msb: torch.Tensor | None = None) -> torch.Tensor:
    """Expected KL(exact || MSB-only) of each attention row, nats: ``[B, H, Lq]``. Reads no LSBs.

    ``p [B, H, Lq, T]``: MSB-only probabilities; ``q [B, H, Lq, D]``: the queries used;
    ``k_scale [B, Hkv, T, 1]``: per-token key scale (one step of the ``msb+lsb`` grid, so an
    MSB step is ``k_scale * 2**lsb_bits``); ``q_scale [B, H, Lq, 1]`` and ``k_msb [B, Hkv, T, D]``
    (MSB-only keys) when the queries were quantized too.

    With independent errors uniform over one MSB step per element, the KL is ``1/2 Var_p`` of
    the score errors: the key part ``sum_j p_j (1 - p_j) s^2 |q|^2 dk_j^2 / 12``, the query part
    ``s^2 dq^2 / 12 * sum_j p_j |k_j - kbar|^2`` (``kbar = sum_j p_j k_j``, ``s = scaling``).
    """
    groups = p.shape[1] // k_scale.shape[1]
    msb_step = float(1 << lsb_bits)
    step2 = _repeat_kv((k_scale.float() * msb_step).square(), groups)                    # [B, H, T, 1]
    var = torch.matmul(p * (1.0 - p), step2).squeeze(-1) * q.float().square().sum(-1)    # [B, H, Lq]
    if q_scale is not None and k_msb is not None:
        k = _repeat_kv(k_msb.float(), groups)
        spread = (torch.matmul(p, k.square().sum(-1, keepdim=True)).squeeze(-1)
                  - torch.matmul(p, k).square().sum(-1)).clamp_min(0.0)
        var = var + (q_scale.float().squeeze(-1) * msb_step).square() * spread
    return var * (0.5 * scaling * scaling / 12.0)


def _needs_lsb(cfg, p: torch.Tensor, q: torch.Tensor, k_scale: torch.Tensor, scaling: float,
               q_scale: torch.Tensor | None = None, k_msb: torch.Tensor | None = None) -> torch.Tensor:
    """Rows to recompute with MSB+LSB, bool ``[B, H, Lq]`` (call only when ``threshold > 0``):
    all rows at ``threshold >= 1``; else the max-probability test or ``expected_msb_kl``."""
    if cfg.threshold >= 1.0:
        return torch.ones(p.shape[:-1], dtype=torch.bool, device=p.device)
    if cfg.criterion == CRITERION_MAX_PROB:
        return p.amax(-1) < cfg.threshold
    return expected_msb_kl(p, q, k_scale, scaling, cfg.lsb_bits, q_scale, k_msb) > cfg.kl_threshold


def eager_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain eager attention (for modules progressive quantization does not cover)."""
    from .handles import PackedKV

    if isinstance(key, PackedKV):
        key, value = key.layer.dequantized_keys(), key.layer.dequantized_values()
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    p = _softmax(query.float(), _repeat_kv(key, groups).float(), scaling, attention_mask)
    p = nn.functional.dropout(p, p=dropout, training=module.training)
    out = torch.matmul(p, _repeat_kv(value, groups).float())
    return out.to(query.dtype).transpose(1, 2).contiguous(), p.to(query.dtype)


def pq_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None = None,
                         dropout: float = 0.0, softcap: float | None = None, **kwargs):
    """Progressive-quantization attention (see the module docstring); ``softcap``: Gemma 2's logit cap."""
    token = _SOFTCAP.set(softcap)
    try:
        return _pq_attention(module, query, key, value, attention_mask, scaling, dropout)
    finally:
        _SOFTCAP.reset(token)


def _pq_attention(module, query, key, value, attention_mask, scaling, dropout):
    from .handles import PackedKV

    rt = runtime_of(module)
    if rt is None:
        return eager_reference(module, query, key, value, attention_mask, scaling, dropout)
    cfg = rt.config
    if cfg.layout == LAYOUT_GROUPED or (isinstance(key, PackedKV) and getattr(key.layer, "layout", "") == LAYOUT_GROUPED):
        return _grouped_forward(module, rt, query, key, value, attention_mask, scaling, dropout)
    msb_bits, lsb_bits = cfg.msb_bits, cfg.lsb_bits
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    b, h, lq, d = query.shape
    hkv = key.shape[1]
    groups = h // hkv

    if cfg.quantize_queries and lq > 1:
        q_codes, qs, qz = quantize(query, msb_bits + lsb_bits, cfg.align_bits)
        q_msb = dequantize_msb(split_planes(q_codes, lsb_bits)[0], lsb_bits, qs, qz)
        q_full = dequantize(q_codes, qs, qz) if lsb_bits else q_msb
    else:
        q_msb = q_full = query.float()
        qs = None

    if isinstance(key, PackedKV):  # packed cache: read the MSB plane, and LSB rows only where needed
        p, out, recomputed = _attend_packed(rt, key.layer, q_msb, q_full, attention_mask, scaling, qs)
        rt.stats.add(layer_index_of(module), b * h * lq, recomputed)
        return out.to(query.dtype).transpose(1, 2).contiguous(), p.to(query.dtype)

    k_codes, ks, kz = quantize(key, msb_bits + lsb_bits, cfg.align_bits)
    k_msb_codes, _ = split_planes(k_codes, lsb_bits)
    vc, vs, vz = quantize(value, cfg.value_bits)
    v = dequantize(vc, vs, vz)
    k_msb = dequantize_msb(k_msb_codes, lsb_bits, ks, kz)

    p = _softmax(q_msb, _repeat_kv(k_msb, groups), scaling, attention_mask)
    recomputed = 0
    if lsb_bits > 0 and cfg.threshold > 0.0:
        need = _needs_lsb(cfg, p, q_msb, ks, scaling, qs, k_msb)  # [B, H, Lq]
        recomputed = int(need.sum())
        if recomputed:
            k_full = dequantize(k_codes, ks, kz)
            p_full = _softmax(q_full, _repeat_kv(k_full, groups), scaling, attention_mask)
            p = torch.where(need[..., None], p_full, p)
    rt.stats.add(layer_index_of(module), b * h * lq, recomputed)

    p = nn.functional.dropout(p, p=dropout, training=module.training)
    out = torch.matmul(p, _repeat_kv(v, groups))
    return out.to(query.dtype).transpose(1, 2).contiguous(), p.to(query.dtype)


def _attend_packed(rt, layer, q_msb, q_full, attention_mask, scaling, q_scale=None):
    """Attention on a ``PQLayer``: -> ``(probabilities [B, H, Lq, T], output [B, H, Lq, D], rows recomputed)``.

    Queries are grouped per key/value head (``[B, Hkv, G*Lq, D]``) so GQA needs no key copies;
    keys and values stay integer codes plus per-token scale/zero (folded into the products).
    """
    cfg = rt.config
    lsb_bits = cfg.lsb_bits
    b, h, lq, d = q_msb.shape
    hkv = layer.k_msb.shape[1]
    g = h // hkv
    t = layer.length

    def grouped(x):
        return x.reshape(b, hkv, g * lq, x.shape[-1])

    def finish(scores):
        scores = _scale(scores.view(b, h, lq, t), scaling)
        if attention_mask is not None:
            scores = scores + attention_mask[..., :t].to(scores.dtype)
        return torch.softmax(scores, dim=-1)

    ks, kz = layer.k_scale.float(), layer.k_zero.float()
    msb = layer.msb_plane().float()                                         # [B, Hkv, T, D]
    mid = ((1 << lsb_bits) - 1) / 2.0   # unknown LSBs at the middle of their range
    qg = grouped(q_msb)
    dot_msb = torch.matmul(qg, msb.transpose(-1, -2))                       # [B, Hkv, G*Lq, T]
    k_t, z_t = ks.transpose(-1, -2), kz.transpose(-1, -2)
    qsum = qg.sum(-1, keepdim=True)
    s_msb = dot_msb * (k_t * float(1 << lsb_bits)) + qsum * (k_t * mid + z_t)
    p = finish(s_msb)
    recomputed = 0
    if lsb_bits > 0 and cfg.threshold > 0.0:
        k_msb = None
        if q_scale is not None and cfg.criterion == CRITERION_EXPECTED_KL and cfg.threshold < 1.0:
            k_msb = msb * (ks * float(1 << lsb_bits)) + (ks * mid + kz)      # MSB-only keys, for the query term
        need = _needs_lsb(cfg, p, q_msb, layer.k_scale, scaling, q_scale, k_msb)  # [B, H, Lq]
        recomputed = int(need.sum())
        rt.stats.lsb_bytes_stored += layer.k_lsb.numel()
        if recomputed:
            # full key = msb * 2**lsb + lsb: reuse the MSB dot products and add those of the LSB plane,
            # read only for the (batch, kv head) pairs with a flat row
            pairs = need.view(b, hkv, g * lq).any(-1)
            everything = bool(pairs.all())
            qf = grouped(q_full)
            dot_hi = dot_msb if q_full is q_msb else torch.matmul(qf, msb.transpose(-1, -2))
            if everything:
                lsb, nbytes = layer.lsb_plane(), layer.k_lsb.numel()
                dot_lo = torch.matmul(qf, lsb.float().transpose(-1, -2))
                s_full = (dot_hi * float(1 << lsb_bits) + dot_lo) * k_t + qf.sum(-1, keepdim=True) * z_t
            else:
                b_idx, h_idx = pairs.nonzero(as_tuple=True)
                lsb, nbytes = layer.lsb_codes(b_idx, h_idx)
                q_sel = qf[b_idx, h_idx]
                dot_lo = torch.matmul(q_sel, lsb.float().transpose(-1, -2))
                s_full = s_msb.clone()
                s_full[b_idx, h_idx] = ((dot_hi[b_idx, h_idx] * float(1 << lsb_bits) + dot_lo) * k_t[b_idx, h_idx]
                                        + q_sel.sum(-1, keepdim=True) * z_t[b_idx, h_idx])
            rt.stats.lsb_bytes_read += nbytes
            p = torch.where(need[..., None], finish(s_full), p)
    vs, vz = layer.v_scale.float(), layer.v_zero.float()
    vcodes = layer.value_plane().float()                                     # [B, Hkv, T, Dv]
    pg = grouped(p)
    out = torch.matmul(pg * vs.transpose(-1, -2), vcodes) + torch.matmul(pg, vz)
    return p, out.view(b, h, lq, -1), recomputed


# -- grouped layout ---------------------------------------------------------------------------
def _grouped_forward(module, rt, query, key, value, attention_mask, scaling, dropout):
    from .grouped import GroupedPQLayer
    from .handles import PackedKV

    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if isinstance(key, PackedKV) and isinstance(key.layer, GroupedPQLayer):
        layer = key.layer
    else:  # no PQCache (encoders, a DynamicCache): quantize these states exactly as the cache would
        if isinstance(key, PackedKV):
            key, value = key.layer.dequantized_keys(), key.layer.dequantized_values()
        layer = GroupedPQLayer(rt.config, return_handles=False)
        layer.update(key, value)
    b, h, lq, _ = query.shape
    exact = getattr(layer, "exact_states", None)
    if exact is not None and exact[0].shape[2] == layer.length:
        # exact_prefill: the call that filled an empty cache layer attends to its own float states (as KIVI
        # and transformers' QuantizedCache do); the cache holds them quantized for the next calls
        layer.exact_states = None
        k, v = exact
        g = h // k.shape[1]
        p = _softmax(query.float(), _repeat_kv(k, g).float(), scaling, attention_mask)
        out = torch.matmul(p, _repeat_kv(v, g).float())
        return out.to(query.dtype).transpose(1, 2).contiguous(), p.to(query.dtype)
    p, out, recomputed, read = attend_grouped(rt.config, layer, query, attention_mask, scaling)
    rt.stats.add(layer_index_of(module), b * h * lq, recomputed)
    rt.stats.lsb_bytes_read += read
    rt.stats.lsb_bytes_stored += layer.lsb_bytes()
    if dropout and module.training:  # training through the quantized attention: dropout as eager does
        groups = query.shape[1] // layer.k_res.shape[1]
        p = nn.functional.dropout(p, p=dropout, training=True)
        out = torch.matmul(p, _repeat_kv(layer.reference_values(), groups))
    return out.to(query.dtype).transpose(1, 2).contiguous(), p.to(query.dtype)


def _expected_kl_grouped(cfg, layer, p: torch.Tensor, qg: torch.Tensor, scaling: float) -> torch.Tensor:
    """Expected KL(exact || MSB-only) per row ``[B, Hkv, G*Lq]`` for the grouped layout (reads no LSBs).

    An MSB-only key element is off by a uniform error over its MSB step ``scale[group, channel] * 2**lsb``,
    so the score error of key ``j`` has variance ``scaling**2 * sum_c q_c**2 step_jc**2 / 12`` (the
    residual window is exact) and the KL is half the ``p``-weighted variance ``sum_j p_j (1 - p_j) var_j``."""
    tk, grp = layer.k_len, cfg.key_group
    b, hkv, rows, t = p.shape
    step2 = (layer.k_scale.float() * float(1 << cfg.lsb_bits)).square()           # [B, Hkv, n, D]
    var = torch.matmul(qg.square(), step2.transpose(-1, -2))                        # [B, Hkv, rows, n]
    pk = p[..., :tk]
    w = (pk * (1.0 - pk)).reshape(b, hkv, rows, tk // grp, grp).sum(-1)
    return (w * var).sum(-1) * (0.5 * scaling * scaling / 12.0)


def attend_grouped(cfg, layer, query: torch.Tensor, attention_mask, scaling: float):
    """Fast attention on a ``GroupedPQLayer``, one matmul per read plane, never a dequantized copy of the cache.

    -> ``(probabilities [B, H, Lq, T], output [B, H, Lq, D], rows recomputed, LSB bytes read)``.
    Queries are grouped per key/value head (``[B, Hkv, G*Lq, D]``) so GQA needs no key copies. Packed mode
    folds the scales and zeros into the queries and probabilities instead of dequantizing the keys and values
    (``_key_scores``, ``_value_output``); ``keep_views=True`` reads its float32 views."""
    b, h, lq, d = query.shape
    hkv = layer.k_res.shape[1]
    g = h // hkv
    t, tk = layer.length, layer.k_len
    qg = query.float().reshape(b, hkv, g * lq, d)
    lsb, thr = cfg.lsb_bits, cfg.threshold
    keys = _KeyReader(cfg, layer, qg)

    def finish(s_q):
        s = s_res if s_q is None else (torch.cat([s_q, s_res], dim=-1) if s_res.shape[-1] else s_q)
        s = _scale(s.view(b, h, lq, t), scaling)
        if attention_mask is not None:
            s = s + attention_mask[..., :t].to(s.dtype)
        return torch.softmax(s, dim=-1)

    s_res = torch.matmul(qg, keys.k_res.transpose(-1, -2))
    recomputed = read = 0
    if tk == 0:
        p = finish(None)
    elif lsb == 0 or thr <= 0.0:
        p = finish(keys.scores(full=False))
    elif thr >= 1.0:
        p = finish(keys.scores(full=True))
        recomputed, read = b * h * lq, layer.lsb_bytes()
    else:
        s_hi = keys.scores(full=False)
        p = finish(s_hi)
        pg = p.view(b, hkv, g * lq, t)
        if cfg.criterion == "max_prob":
            need = pg.amax(-1) < thr
        else:
            need = _expected_kl_grouped(cfg, layer, pg, qg, scaling) > cfg.kl_threshold
        pairs = need.any(-1)                                                        # [B, Hkv]
        if bool(pairs.any()):
            recomputed = int(need.sum())
            s_full, read = keys.scores(full=True), layer.lsb_bytes()
            if not bool(pairs.all()):
                b_idx, h_idx = pairs.nonzero(as_tuple=True)
                s_full = s_hi.clone().index_put_((b_idx, h_idx), s_full[b_idx, h_idx])
                read = layer.lsb_bytes(b_idx, h_idx)
            p = torch.where(need.view(b, h, lq, 1), finish(s_full), p)
    out = _value_output(cfg, layer, p.view(b, hkv, g * lq, t))
    return p, out.view(b, h, lq, -1), recomputed, read


class _KeyReader:
    """Attention logits ``q . k`` of the quantized keys of a ``GroupedPQLayer``.

    A key is ``k = code * s + z`` per group of ``key_group`` tokens and channel. MSB-only keys read
    ``code = msb * 2**lsb + (2**lsb - 1) / 2`` (the bucket centre), full keys ``code = msb * 2**lsb + lsb``.
    Packed mode, a few query rows (decode, ``R <= NATIVE_MAX_ROWS``): the fused kernel (``native.key_scores``)
    reads the packed planes and folds the scales into the queries, writing nothing but the logits. Otherwise,
    or when the kernel cannot be built: the planes are unpacked once per call (``GroupedPQLayer.key_planes``),
    joined as integers, and dequantized into one transient float32 tensor (one ``addcmul``) for one matmul
    (measured faster on CPU than folding the scales into per-group query copies, many tiny batched matmuls).
    ``keep_views=True`` multiplies the float32 views."""

    def __init__(self, cfg, layer, qg: torch.Tensor):
        self.cfg, self.layer, self.qg = cfg, layer, qg
        self.k_res = layer.residual_views()[0]
        self._planes = None

    def scores(self, full: bool) -> torch.Tensor:
        """``[B, Hkv, R, Tk]`` logits (unscaled) of the queries ``qg [B, Hkv, R, D]`` against the quantized keys."""
        layer, qg = self.layer, self.qg
        if self.cfg.keep_views:
            hi, whole, _ = layer.key_views()
            return torch.matmul(qg, (whole if full else hi).transpose(-1, -2))
        if use_native(qg):
            return self._native_scores(full)
        return torch.matmul(qg, self.keys(full).transpose(-1, -2))

    def _scale_zero(self, full: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(scale, zero, with_lsb)`` float32 ``[B, Hkv, n, D]`` of the code the keys are read with: the joined
        MSB+LSB code, or the MSB code alone with the bucket centre folded into the zero point."""
        layer = self.layer
        s, z = layer.k_scale.float(), layer.k_zero.float()
        if full and layer.lsb_bits and layer.needs_full_view:
            return s, z, True
        step = float(1 << layer.lsb_bits)
        return s * step, z + s * ((step - 1.0) / 2.0), False

    def _native_scores(self, full: bool) -> torch.Tensor:
        layer = self.layer
        s, z, with_lsb = self._scale_zero(full)
        return native.key_scores(self.qg, layer.k_msb, layer.msb_bits, layer.k_lsb if with_lsb else None,
                                 layer.lsb_bits, s, z, self.cfg.key_group)

    def keys(self, full: bool) -> torch.Tensor:
        """Packed mode: the quantized keys ``[B, Hkv, Tk, D]`` float32, MSB-only or full."""
        layer = self.layer
        if self._planes is None:
            self._planes = layer.key_planes()
        msb, lsb = self._planes
        s, z, with_lsb = self._scale_zero(full and lsb is not None)
        if with_lsb:
            wide = msb if layer.msb_bits + layer.lsb_bits <= 8 else msb.to(torch.int32)
            codes = (wide << layer.lsb_bits) | lsb
        else:
            codes = msb
        return dequantize_grouped(codes, s, z)


#: the fused kernels serve calls with at most this many query rows per key/value head (decode steps and short
#: chunks); longer calls (the prefill) multiply dequantized tensors with PyTorch's matmul
NATIVE_MAX_ROWS = 32


def use_native(qg: torch.Tensor) -> bool:
    """Whether a call with grouped queries ``qg [B, Hkv, R, D]`` runs the fused kernels (``native.py``): few
    rows, no gradient wanted (the kernels have no backward), the kernels built."""
    if torch.is_grad_enabled() and qg.requires_grad:
        return False
    return qg.shape[-2] <= NATIVE_MAX_ROWS and qg.shape[-1] <= native.MAX_HEAD_DIM and native.usable(qg)


def dequantize_grouped(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``codes [B, H, n * G, D]`` (integers) with ``scale``/``zero [B, H, n, D]`` per group of ``G`` consecutive
    tokens and channel -> ``codes * scale + zero`` float32 ``[B, H, n * G, D]`` (one ``addcmul``)."""
    b, h, t, d = codes.shape
    n = scale.shape[2]
    out = torch.addcmul(zero.unsqueeze(3), codes.view(b, h, n, t // n, d), scale.unsqueeze(3))
    return out.view(b, h, t, d)


def _value_output(cfg, layer, pg: torch.Tensor) -> torch.Tensor:
    """``pg [B, Hkv, R, T] @ values`` -> ``[B, Hkv, R, D]``: the residual window exactly; the quantized values
    ``(code * s + z) @ rotation`` (per token and group of channels) as ``((pg * s) @ code + pg @ z) @ rotation``:
    scales into the probabilities, the rotation applied to the ``R`` output rows, not to every cached token."""
    tv, t = layer.v_len, pg.shape[-1]
    v_res = layer.residual_views()[1]
    out = torch.matmul(pg[..., tv:], v_res) if t > tv else None
    if not tv:
        return out
    p = pg[..., :tv] if t > tv else pg
    if cfg.keep_views:
        o = torch.matmul(p, layer.value_views()[0])
    elif use_native(pg):
        o = native.value_output(p, layer.v_codes, layer.value_bits, layer.v_scale.float(), layer.v_zero.float(),
                                layer.value_group)
        if layer.rotation is not None:
            o = torch.matmul(o, layer.rotation)
    else:
        o = _grouped_values(p, layer.value_codes(), layer.v_scale.float(), layer.v_zero.float(), layer.value_group)
        if layer.rotation is not None:
            o = torch.matmul(o, layer.rotation)
    return o if out is None else out + o


def _grouped_values(p: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                    group: int) -> torch.Tensor:
    """``p [B, Hkv, R, T]`` times values ``codes * scale + zero`` (``codes [B, Hkv, T, D]``, ``scale``/``zero
    [B, Hkv, T, D / group]`` per token and group of channels) -> ``[B, Hkv, R, D]``."""
    parts = []
    for j in range(scale.shape[-1]):
        sl = slice(j * group, (j + 1) * group)
        o = torch.matmul(p * scale[..., j].unsqueeze(-2), codes[..., sl])
        parts.append(o + torch.matmul(p, zero[..., j:j + 1]))
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def attend_grouped_reference(cfg, layer, query: torch.Tensor, attention_mask, scaling: float):
    """Slow reference of ``attend_grouped``: keys and values rebuilt from the packed planes with the
    generic ``quant.unpack``, copied per query head, eager attention, the recompute test written per
    token. Same return convention."""
    b, h, lq, d = query.shape
    hkv = layer.k_res.shape[1]
    g = h // hkv
    q = query.float()
    lsb, thr = cfg.lsb_bits, cfg.threshold

    def probs(k):
        s = _scale(torch.matmul(q, _repeat_kv(k, g).transpose(-1, -2)), scaling)
        if attention_mask is not None:
            s = s + attention_mask[..., : k.shape[-2]].to(s.dtype)
        return torch.softmax(s, dim=-1)

    p_hi = probs(layer.reference_keys(full=False))
    p_full = probs(layer.reference_keys(full=True))
    if layer.k_len == 0 or lsb == 0 or thr <= 0.0:
        need = torch.zeros(b, h, lq, dtype=torch.bool)
    elif thr >= 1.0:
        need = torch.ones(b, h, lq, dtype=torch.bool)
    elif cfg.criterion == CRITERION_MAX_PROB:
        need = p_hi.amax(-1) < thr
    else:
        step2 = (layer.k_scale.float() * float(1 << lsb)).square().repeat_interleave(cfg.key_group, dim=2)
        step2 = torch.cat([step2, step2.new_zeros(b, hkv, layer.length - layer.k_len, d)], dim=2)  # exact window
        var = torch.matmul(q.square(), _repeat_kv(step2, g).transpose(-1, -2))  # [B, H, Lq, T]
        need = (p_hi * (1 - p_hi) * var).sum(-1) * (0.5 * scaling * scaling / 12.0) > cfg.kl_threshold
    p = torch.where(need[..., None], p_full, p_hi)
    out = torch.matmul(p, _repeat_kv(layer.reference_values(), g))
    return p, out, int(need.sum())


def register() -> None:
    """Register ``slimkit_pq`` with transformers' attention and mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, pq_attention_forward)
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(NAME, eager_mask)
