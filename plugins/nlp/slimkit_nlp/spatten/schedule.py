"""Keep-ratio schedules and the top-k selection of kept tokens / heads.

Schedule (SpAtten): no pruning in the first ``start`` share of the layers (at least one layer
for tokens); over the remaining layers the keep ratio falls linearly and its average equals
the target. Ratios are shares of the original count, non-increasing, so removed items stay
removed (cascade).
"""
from __future__ import annotations

import math

import torch


def keep_schedule(n_layers: int, keep: float, start: float, min_start_layers: int = 1,
                  slope: float = 0.5) -> list[float]:
    """Per-layer share of the original tokens (or heads) that layer ``l`` processes.

    ``[1.0] * p`` for the first ``p = max(min_start_layers, ceil(start * n_layers))`` layers,
    then a line from ``keep + g`` down to ``keep - g`` (``g = slope * min(keep, 1 - keep)``) whose
    mean is ``keep``; ``slope`` 0 is flat, 1 the steepest that stays within [0, 1]. ``keep == 1``
    gives all ones.
    """
    if keep >= 1.0 or n_layers <= 0:
        return [1.0] * max(n_layers, 0)
    p = max(min_start_layers, math.ceil(start * n_layers - 1e-9))
    p = min(p, n_layers)
    n = n_layers - p
    if n == 0:
        return [1.0] * n_layers
    g = slope * min(keep, 1.0 - keep)
    if n == 1:
        ratios = [keep]
    else:
        ratios = [keep + g - 2.0 * g * i / (n - 1) for i in range(n)]
    return [1.0] * p + ratios


def kv_budget_schedule(n_layers: int, budget: float, start: float, slope: float = 0.5) -> list[float]:
    """Decoders: per-layer keep ratios whose mean over *all* ``n_layers`` is ``budget``.

    ``token_keep=b`` on a decoder means the KV budget: at most a share ``b`` of the prompt's keys and
    values, counted over all layers, stays in the cache. The first ``p = ceil(start * n_layers)``
    layers keep everything (they score the tokens; at least one), lowered while the pruned layers
    would keep less than half the budget (``p`` full layers eat ``p / n_layers`` of it); the others
    follow ``keep_schedule`` with the mean ``(b * n_layers - p) / (n_layers - p)``, so the ratios
    stay non-increasing (cascade). ``ConfigError`` when even one full layer exceeds the budget.
    """
    from slimkit.errors import ConfigError

    if budget >= 1.0 or n_layers <= 0:
        return [1.0] * max(n_layers, 0)
    if budget * n_layers <= 1.0 + 1e-9:
        raise ConfigError(f"token_keep={budget:g} cannot be met on a {n_layers}-layer decoder: its first layer "
                          f"is never pruned (it scores the tokens) and alone holds 1/{n_layers} = "
                          f"{1 / n_layers:.0%} of the KV cache; use token_keep > {1 / n_layers:.3g}")
    p = min(max(1, math.ceil(start * n_layers - 1e-9)), n_layers - 1)
    while p > 1 and (budget * n_layers - p) / (n_layers - p) < budget / 2:
        p -= 1
    mean = (budget * n_layers - p) / (n_layers - p)
    return [1.0] * p + keep_schedule(n_layers - p, mean, 0.0, 0, slope)


def count_for(ratio: float, n: torch.Tensor) -> torch.Tensor:
    """``ceil(ratio * n)`` per sample (``n`` a LongTensor of real lengths), at least 1 where n > 0."""
    if ratio >= 1.0:
        return n.clone()
    k = torch.ceil(n.to(torch.float64) * ratio - 1e-9).to(torch.long)
    return torch.minimum(torch.clamp(k, min=1), n)


def select_slots(rank: torch.Tensor, valid: torch.Tensor, protected: torch.Tensor, k: torch.Tensor,
                 cols: torch.Tensor, pad_first: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Choose which slots to keep.

    rank, valid, protected, cols: ``(B, n)``; ``k``: ``(B,)`` tokens to keep per sample (raised to
    the number of protected valid slots). Returns ``(index (B, kmax), new_valid (B, kmax))`` with
    the kept slots in original order (``cols`` ascending) and the padding slots first
    (``pad_first``, causal) or last; or None when nothing has to go.
    """
    n_valid = valid.sum(1)
    n_prot = (protected & valid).sum(1)
    k = torch.minimum(torch.maximum(k, n_prot), n_valid)
    if bool((k >= n_valid).all()):      # no real token has to go (padding alone is never compacted)
        return None
    kmax = max(int(k.max()), 1)
    key = rank.to(torch.float64).masked_fill(protected, math.inf).masked_fill(~valid, -math.inf)
    top = key.topk(kmax, dim=1).indices                               # (B, kmax) best first
    keep = torch.arange(kmax, device=rank.device).unsqueeze(0) < k.unsqueeze(1)
    order_key = cols.gather(1, top).to(torch.float64)
    fill = -1.0 if pad_first else math.inf
    order_key = order_key.masked_fill(~keep, fill)
    order = order_key.argsort(dim=1, stable=True)
    index = top.gather(1, order)
    new_valid = keep.gather(1, order) & valid.gather(1, index)
    return index, new_valid

def gather_slots(x: torch.Tensor, index: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Gather ``x`` along ``dim`` with a ``(B, n)`` index (broadcast over the trailing dims)."""
    shape = list(x.shape)
    idx = index
    for _ in range(x.dim() - dim - 1):
        idx = idx.unsqueeze(-1)
    shape[dim] = index.shape[1]
    return x.gather(dim, idx.expand(*shape))
