"""Rank choice and SVD split of a 3D kernel into a spatial and a temporal kernel.

A Conv3d kernel W of shape (o, i/g, t, kh, kw) is, per group j, the matrix
A_j[(o', t), (i', h, w)] (rows: output channel then temporal tap; columns: input
channel then spatial tap). With A_j = U S V^T truncated at M components:

    spatial  kernel  = sqrt(S) V^T  reshaped to (M, i/g, 1, kh, kw)
    temporal kernel  = U sqrt(S)    reshaped to (o/g, t, M) -> (o/g, M, t, 1, 1)

so that sum_m temporal[o, m, t] * spatial[m, i, h, w] = A_M[(o, t), (i, h, w)]: applying the
spatial conv, then the temporal conv, is the 3D conv with the kernel A_M (exact at full rank,
min(o/g * t, i/g * kh * kw) per group).
"""
from dataclasses import dataclass

import torch


def matched_rank(in_channels: int, out_channels: int, t: int, kh: int, kw: int) -> int:
    """R(2+1)D's parameter-matching width: floor(t*kh*kw*N_in*N_out / (kh*kw*N_in + t*N_out)).

    Always below min(N_out*t, N_in*kh*kw), so it never needs clamping.
    """
    k2 = kh * kw
    return (t * k2 * in_channels * out_channels) // (k2 * in_channels + t * out_channels)


def full_rank(conv) -> int:
    """Total width at which the split is exact: groups * min(o/g * t, i/g * kh * kw)."""
    o, ig, t, kh, kw = conv.weight.shape
    g = conv.groups
    return g * min((o // g) * t, ig * kh * kw)


def kernel_matrices(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(o, i/g, t, kh, kw) -> (g, (o/g)*t, (i/g)*kh*kw) in float64 (rows o then t, columns i then h, w)."""
    o, ig, t, kh, kw = weight.shape
    og = o // groups
    w = weight.detach().to(device="cpu", dtype=torch.float64)
    return w.reshape(groups, og, ig, t, kh, kw).permute(0, 1, 3, 2, 4, 5).reshape(groups, og * t, ig * kh * kw)


@dataclass
class Spectrum:
    """Singular values and vectors of one conv's kernel matrices (one batch row per group)."""

    U: torch.Tensor   # (g, og*t, r)
    S: torch.Tensor   # (g, r)
    Vh: torch.Tensor  # (g, r, ig*kh*kw)

    @property
    def rank_per_group(self) -> int:
        return self.S.shape[1]

    def energy_rank(self, fraction: float) -> int:
        """Smallest per-group M keeping ``fraction`` of every group's spectral energy (sum of s^2)."""
        e = self.S ** 2
        cum = e.cumsum(1) / e.sum(1, keepdim=True).clamp_min(1e-300)
        need = (cum < fraction - 1e-9).sum(1) + 1
        return int(min(need.max().item(), self.rank_per_group))

    def relative_error(self, m_per_group: int) -> float:
        """||A - A_M||_F / ||A||_F over all groups (from the discarded singular values)."""
        e = self.S ** 2
        total = e.sum().item()
        if total == 0.0:
            return 0.0
        return float((e[:, m_per_group:].sum().item() / total) ** 0.5)


def spectrum(weight: torch.Tensor, groups: int) -> Spectrum:
    U, S, Vh = torch.linalg.svd(kernel_matrices(weight, groups), full_matrices=False)
    return Spectrum(U, S, Vh)


def split_kernel(weight: torch.Tensor, groups: int, m_per_group: int, spec: Spectrum | None = None,
                 pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-M split of a 3D kernel: ``(spatial, temporal)`` in the weight's dtype and device.

    spatial: (g*Mp, i/g, 1, kh, kw); temporal: (o, Mp, t, 1, 1), where Mp = ``pad_to`` or M
    (components beyond M, or beyond the available rank, are zero).
    """
    o, ig, t, kh, kw = weight.shape
    og = o // groups
    spec = spec or spectrum(weight, groups)
    m = min(m_per_group, spec.rank_per_group)
    mp = pad_to or m_per_group
    root = spec.S[:, :m].sqrt()                                        # (g, m)
    sp = root[:, :, None] * spec.Vh[:, :m, :]                          # (g, m, ig*kh*kw)
    tm = spec.U[:, :, :m] * root[:, None, :]                           # (g, og*t, m)
    spatial = torch.zeros(groups, mp, ig * kh * kw, dtype=torch.float64)
    spatial[:, :m] = sp
    temporal = torch.zeros(groups, og, t, mp, dtype=torch.float64)
    temporal[..., :m] = tm.reshape(groups, og, t, m)
    spatial = spatial.reshape(groups * mp, ig, 1, kh, kw)
    temporal = temporal.permute(0, 1, 3, 2).reshape(o, mp, t, 1, 1)
    like = dict(dtype=weight.dtype, device=weight.device)
    return spatial.to(**like), temporal.to(**like)
