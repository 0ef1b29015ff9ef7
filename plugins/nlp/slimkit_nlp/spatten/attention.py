"""Attention pieces of the layer loop: additive masks, slimkit's encoder attention, local value pruning."""
from __future__ import annotations

import torch


def additive_mask(q_cols, k_cols, k_valid, causal: bool, dtype, window: int | None = None,
                  heads: int = 1) -> torch.Tensor:
    """Additive mask ``(B, 1, Lq, Lk)``: 0 where a query may attend, the dtype's minimum elsewhere.

    ``q_cols (B, Lq)``; ``k_cols``/``k_valid`` ``(B, Lk)``, or ``(B, Hkv, Lk)`` when each key/value head
    keeps its own tokens (``kv_heads="separate"``): then the mask is ``(B, heads, Lq, Lk)``, each of the
    ``heads`` query heads masked by its group's key/value head.
    ``window``: sliding-window layers: a query sees only keys less than ``window`` columns back (real
    tokens of one sample are consecutive columns, so this is the distance in positions)."""
    if k_cols.dim() == 2:
        return _allowed_to_additive(_allowed(q_cols, k_cols, k_valid, causal, window), dtype).unsqueeze(1)
    hk = k_cols.shape[1]
    ok = _allowed(q_cols.unsqueeze(1).expand(-1, hk, -1).flatten(0, 1), k_cols.flatten(0, 1),
                  k_valid.flatten(0, 1), causal, window)
    ok = ok.view(k_cols.shape[0], hk, *ok.shape[1:]).repeat_interleave(heads // hk, dim=1)
    return _allowed_to_additive(ok, dtype)


def _allowed(q_cols, k_cols, k_valid, causal: bool, window: int | None) -> torch.Tensor:
    """``(B, Lq, Lk)`` bool: query ``i`` may attend to key ``j``."""
    ok = k_valid[:, None, :].expand(-1, q_cols.shape[1], -1)
    if causal:
        ok = ok & (k_cols[:, None, :] <= q_cols[:, :, None])
    if window is not None:
        ok = ok & (k_cols[:, None, :] > q_cols[:, :, None] - window)
    return ok


def _allowed_to_additive(ok: torch.Tensor, dtype) -> torch.Tensor:
    m = torch.zeros(ok.shape, dtype=dtype, device=ok.device)
    return m.masked_fill(~ok, torch.finfo(dtype).min)


HEAD_CHUNK = 2          # heads per block in the encoder attention (keeps a block's probabilities in cache)


def encoder_attention(q, k, v, key_bias, scaling: float, q_valid, need_scores: bool):
    """Eager attention for encoders: ``(context (B, L, H, d), received (B, S) or None)``.

    ``q (B, H, L, d)``, ``k``/``v (B, Hkv, S, d)``; ``key_bias (B, S)`` or None: added to every
    query's logit for that key (log of merged sizes; a large negative number for padding). Encoder
    masks depend on the key only, so the bias rides in one extra channel of ``q`` (ones) and ``k``
    (the bias) and costs no pass over ``L x S``; the scaling is folded into ``q`` likewise. Heads run
    in blocks of ``HEAD_CHUNK`` so each block's probabilities stay in cache; ``received`` is the
    attention each key got, summed over heads and the real queries of ``q_valid (B, L)``.
    Layers whose scores nobody reads (no later pruning) run PyTorch's fused ``sdpa`` instead.
    """
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    if not need_scores:
        mask = None if key_bias is None else key_bias[:, None, None, :].to(q.dtype)
        ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
        return ctx.transpose(1, 2), None
    q = q * scaling
    if key_bias is not None:
        q = torch.cat([q, torch.ones_like(q[..., :1])], dim=-1)
        k = torch.cat([k, key_bias[:, None, :, None].to(k.dtype).expand(-1, k.shape[1], -1, 1)], dim=-1)
    weights = q_valid.to(torch.float32)[:, None, None, :]                    # (B, 1, 1, L)
    ctx = torch.empty(q.shape[0], q.shape[2], q.shape[1], v.shape[-1], dtype=v.dtype, device=v.device)
    received = torch.zeros(q.shape[0], k.shape[2], dtype=torch.float32, device=q.device)
    for h in range(0, q.shape[1], HEAD_CHUNK):
        p = torch.softmax(torch.matmul(q[:, h:h + HEAD_CHUNK], k[:, h:h + HEAD_CHUNK].transpose(-1, -2)), dim=-1)
        ctx[:, :, h:h + HEAD_CHUNK] = torch.matmul(p, v[:, h:h + HEAD_CHUNK]).transpose(1, 2)
        received += torch.matmul(weights.to(p.dtype), p).sum((1, 2)).float()
    return ctx, received


def key_bias(k_valid, merge_bias):
    """``(B, S)`` additive logit bias of each key for encoders: ``merge_bias`` (or None) plus a large
    negative number for padding keys; None when there is none."""
    bias = merge_bias
    if not bool(k_valid.all()):
        pad = torch.zeros(k_valid.shape, dtype=torch.float32, device=k_valid.device).masked_fill(~k_valid, -1e9)
        bias = pad if bias is None else bias + pad
    return bias


def value_prune(probs, values, mask, keep: float):
    """Local value pruning: per query keep the ``keep`` share of visible values with the largest
    probabilities (the rest are skipped, not renormalised). Returns ``(context (B, Lq, H, d), share used)``."""
    B, H, Lq, Lk = probs.shape
    v = values
    if v.shape[1] != H:
        v = v.repeat_interleave(H // v.shape[1], dim=1)
    visible = (torch.ones(B, 1, Lq, Lk, dtype=torch.bool, device=probs.device) if mask is None
               else mask == 0).expand(B, H, Lq, Lk)
    n_vis = visible.sum(-1, keepdim=True)
    kk = torch.ceil(n_vis.float() * keep).clamp(min=1).long()
    srt = probs.sort(dim=-1, descending=True).values
    thr = srt.gather(-1, (kk - 1).clamp(max=Lk - 1))
    pruned = torch.where(probs >= thr, probs, torch.zeros_like(probs))
    used = float(((pruned > 0) & visible).sum()) / max(float(visible.sum()), 1.0)
    ctx = torch.matmul(pruned, v).transpose(1, 2).contiguous()
    return ctx, used
