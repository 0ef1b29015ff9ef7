"""Encoders, ``pruned_tokens="merge"``: fold pruned tokens into their most similar kept token (ToMe-style)."""
from __future__ import annotations

import torch

from .schedule import gather_slots


def merge_pruned(h, size, gone, index, targets):
    """Merge every pruned token into its most similar kept token (ToMe-style, encoders).

    h ``(B, n, D)`` and size ``(B, n)`` before pruning; gone ``(B, n)`` the pruned real slots; index
    ``(B, k)`` the kept slots; targets ``(B, k)`` kept slots that may absorb (real, not protected:
    CLS/SEP stay pure for task heads). Each pruned token goes to the target with the highest cosine
    similarity of hidden states; the target becomes the size-weighted mean. Returns the kept
    ``(h (B, k, D), size (B, k))`` and ``merged_into (B, n)``: each pruned slot's target in the kept
    slots (-1 elsewhere).
    """
    hk, sk = gather_slots(h, index), size.gather(1, index)
    n_gone = gone.sum(1)
    gmax = int(n_gone.max())
    g_idx = gone.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :gmax]   # (B, g) gone slots first
    g_ok = torch.arange(gmax, device=h.device)[None, :] < n_gone[:, None]
    hg, sg = gather_slots(h, g_idx), size.gather(1, g_idx) * g_ok
    sim = torch.nn.functional.normalize(hg, dim=-1) @ torch.nn.functional.normalize(hk, dim=-1).transpose(1, 2)
    tgt = sim.masked_fill(~targets[:, None, :], -torch.inf).argmax(-1)                    # (B, g)
    sg = torch.where(targets.any(1, keepdim=True), sg, torch.zeros_like(sg))
    add = torch.zeros_like(sk).scatter_add(1, tgt, sg)
    acc = torch.zeros_like(hk).scatter_add(1, tgt[..., None].expand_as(hg), hg * sg[..., None])
    new_size = sk + add
    merged = (hk * sk[..., None] + acc) / new_size.clamp(min=1e-6)[..., None]
    merged_into = torch.full_like(size, -1, dtype=torch.long).scatter(1, g_idx, torch.where(sg > 0, tgt, -1))
    return torch.where((add > 0)[..., None], merged, hk), new_size, merged_into


def size_bias(size, valid):
    """Additive attention bias ``(B, n)``: log of each key's size (0 for padding, masked anyway)."""
    return torch.where(valid, size.clamp(min=1e-6).log(), torch.zeros_like(size))
