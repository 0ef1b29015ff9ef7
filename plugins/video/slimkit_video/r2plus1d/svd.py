"""Rank choice and SVD split of a 3D kernel into a spatial and a temporal kernel.

A Conv3d kernel W of shape (o, i/g, t, kh, kw) is, per group j, the matrix
A_j[(o', t), (i', h, w)] (rows: output channel then temporal tap; columns: input
channel then spatial tap). With A_j = U S V^T truncated at M components:

    spatial  kernel  = sqrt(S) V^T  reshaped to (M, i/g, 1, kh, kw)
    temporal kernel  = U sqrt(S)    reshaped to (o/g, t, M) -> (o/g, M, t, 1, 1)

so that sum_m temporal[o, m, t] * spatial[m, i, h, w] = A_M[(o, t), (i, h, w)]: applying the
spatial conv, then the temporal conv, is the 3D conv with the kernel A_M (exact at full rank,
min(o/g * t, i/g * kh * kw) per group).

Two solvers give the same truncation (tests check that they agree):

* ``exact`` (the reference): the full float64 SVD of A (``torch.linalg.svd``). For R3D-18's
  largest kernels (1536 x 4608) one SVD takes half a minute on one core.
* ``gram`` (the default): the eigendecomposition of the smaller Gram matrix (A A^T or A^T A, n x n
  with n = min(rows, cols)), then one product for the other side's vectors. Large kernels (n >= 256)
  run in float32 where float32 resolves the cut (the smallest kept eigenvalue well above float32's noise
  floor: flat and moderately decaying spectra), else in float64; a cut that discards little energy has
  its error measured in the complement (not read off the eigenvalues). R3D-18 converts an order of
  magnitude faster (``slimkit_video.benchmarks.r2plus1d``: ``r2plus1d-svd-speed``).
"""
from dataclasses import dataclass
from typing import Literal, Optional

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


SOLVERS = ("gram", "exact")
#: Gram side at least this large: float32 (below it, float64 costs nothing and is exact enough)
FLOAT32_MIN_SIDE = 256
#: float32 is kept when the smallest kept eigenvalue is this many times float32's noise floor
#: (eps * largest eigenvalue * sqrt(Gram inner size)); measured: ratio 200 -> error within 1e-7 of the
#: exact one, 25 -> 1.4e-5, 6 -> 1e-4, 1 -> 1e-3 (relative), so below it the Gram is redone in float64
FLOAT32_MIN_RESOLUTION = 30.0
#: a cut discarding less than this fraction of the energy has it measured, not read off the eigenvalues
MEASURE_BELOW = 1e-2


def kernel_matrices(weight: torch.Tensor, groups: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(o, i/g, t, kh, kw) -> (g, (o/g)*t, (i/g)*kh*kw) in ``dtype`` (rows o then t, columns i then h, w)."""
    o, ig, t, kh, kw = weight.shape
    og = o // groups
    w = weight.detach().to(device="cpu", dtype=dtype)
    return w.reshape(groups, og, ig, t, kh, kw).permute(0, 1, 3, 2, 4, 5).reshape(groups, og * t, ig * kh * kw)


@dataclass
class Factors:
    """A rank-M split of the kernel matrices: ``temporal @ spatial`` approximates A.

    spatial: (g, M, cols); temporal: (g, rows, M); in the solver's dtype (float64 for the exact one),
    balanced (component j has the same norm, sqrt(s_j), in both). rel_error: ||A - temporal @ spatial||_F
    / ||A||_F over all groups.
    """

    spatial: torch.Tensor
    temporal: torch.Tensor
    rel_error: float


def _energy_rank(energies: torch.Tensor, fraction: float) -> int:
    """Smallest per-group M whose leading ``energies`` (g, r), sorted descending, keep ``fraction``."""
    e = energies.double()
    cum = e.cumsum(1) / e.sum(1, keepdim=True).clamp_min(1e-300)
    need = (cum < fraction - 1e-9).sum(1) + 1
    return int(min(need.max().item(), e.shape[1]))


@dataclass
class Spectrum:
    """The reference: full float64 SVD of one conv's kernel matrices (one batch row per group)."""

    U: torch.Tensor   # (g, og*t, r)
    S: torch.Tensor   # (g, r)
    Vh: torch.Tensor  # (g, r, ig*kh*kw)
    solver: str = "exact"

    @property
    def rank_per_group(self) -> int:
        return self.S.shape[1]

    def energy_rank(self, fraction: float) -> int:
        """Smallest per-group M keeping ``fraction`` of every group's spectral energy (sum of s^2)."""
        return _energy_rank(self.S ** 2, fraction)

    def relative_error(self, m_per_group: int) -> float:
        """||A - A_M||_F / ||A||_F over all groups (from the discarded singular values)."""
        e = self.S ** 2
        total = e.sum().item()
        if total == 0.0:
            return 0.0
        return float((e[:, m_per_group:].sum().item() / total) ** 0.5)

    def factors(self, m_per_group: int) -> Factors:
        """The best rank-M split (Eckart-Young): spatial sqrt(S) V^T, temporal U sqrt(S)."""
        m = min(m_per_group, self.rank_per_group)
        root = self.S[:, :m].sqrt()
        return Factors(root[:, :, None] * self.Vh[:, :m, :], self.U[:, :, :m] * root[:, None, :],
                       self.relative_error(m))


def gram_lower(B: torch.Tensor, blocks: int = 8) -> torch.Tensor:
    """The lower triangle (diagonal included) of B B^T for B (g, n, c); the upper part is zero.

    ``torch.linalg.eigh`` reads only the lower triangle, so row blocks i >= j suffice: (blocks + 1) / (2
    blocks) of the full product's work (about 40% less time for R3D-18's largest kernels).
    """
    g, n, _ = B.shape
    if n < FLOAT32_MIN_SIDE:
        return B @ B.mT
    G = torch.zeros(g, n, n, dtype=B.dtype)
    edges = [round(n * i / blocks) for i in range(blocks + 1)]
    for lo, hi in zip(edges, edges[1:]):
        G[:, lo:hi, :hi] = B[:, lo:hi] @ B[:, :hi].mT
    return G


class GramSpectrum:
    """The fast solver: eigendecomposition of the smaller Gram matrix of the kernel matrices A (g, rows, cols).

    With rows <= cols, G = A A^T = U diag(s^2) U^T gives the temporal side U and the spatial side is
    the product U^T A (= diag(s) V^T); otherwise G = A^T A gives V and the temporal side is A V. The
    n x n eigendecomposition (n = min(rows, cols)) and two products replace the full SVD. Components are
    balanced from the norms of the product rows, so the split is exact for the subspace found even
    where float32 eigenvalues are only noise.
    """

    solver = "gram"

    def __init__(self, weight: torch.Tensor, groups: int, dtype: Optional[torch.dtype] = None):
        o, ig, t, kh, kw = weight.shape
        self.shape, self.groups = tuple(weight.shape), groups
        self.rows, self.cols = (o // groups) * t, ig * kh * kw
        self.weight = weight
        side = min(self.rows, self.cols)
        self.dtype = dtype or (torch.float32 if side >= FLOAT32_MIN_SIDE and weight.dtype != torch.float64
                               else torch.float64)
        self._decompose(self.dtype)

    def _decompose(self, dtype: torch.dtype) -> None:
        """Eigenvalues (descending, as float64 squared singular values) and vectors of the small side."""
        self.dtype = dtype
        self.A = kernel_matrices(self.weight, self.groups, dtype)
        self.tall = self.rows > self.cols          # Gram of the columns: vectors are V
        G = gram_lower(self.A.mT if self.tall else self.A)
        self.total = float(G.diagonal(dim1=-2, dim2=-1).sum(dtype=torch.float64))   # ||A||_F^2 = trace G
        evals, evecs = torch.linalg.eigh(G)
        self.energies = evals.flip(-1).double().clamp_min(0.0)          # (g, n) = s^2, descending
        self.vectors = evecs.flip(-1)                                    # (g, n, n), columns by energy

    @property
    def S(self) -> torch.Tensor:
        """Singular values (g, n), descending (from the eigenvalues: float32-accurate for large kernels)."""
        return self.energies.sqrt()

    @property
    def rank_per_group(self) -> int:
        return self.energies.shape[1]

    def energy_rank(self, fraction: float) -> int:
        """Smallest per-group M keeping ``fraction`` of every group's spectral energy (sum of s^2)."""
        return _energy_rank(self.energies, fraction)

    def relative_error(self, m_per_group: int) -> float:
        """||A - A_M||_F / ||A||_F estimated from the discarded eigenvalues (``factors`` measures it)."""
        total = self.energies.sum().item()
        if total == 0.0:
            return 0.0
        return float((self.energies[:, m_per_group:].sum().item() / total) ** 0.5)

    def _project(self, Q: torch.Tensor) -> torch.Tensor:
        """The kernel matrices seen through the small-side vectors ``Q`` (g, n, k): (g, k, other side)."""
        return (self.A @ Q).mT if self.tall else Q.mT @ self.A

    def _discarded_energy(self, m: int) -> float:
        """Energy a rank-``m`` cut leaves out: from the eigenvalues when it is at least
        ``MEASURE_BELOW`` of the total (float32 eigenvalues resolve it to ~1e-7 of the total), else
        measured directly in the complement ``W_rest^T A`` (no cancellation against the total)."""
        if m >= self.rank_per_group:
            return 0.0
        from_eigenvalues = float(self.energies[:, m:].sum())
        if from_eigenvalues >= MEASURE_BELOW * self.total:
            return from_eigenvalues
        return float((self._project(self.vectors[..., m:]).double() ** 2).sum())

    def _split(self, m: int) -> Factors:
        Q = self.vectors[..., :m]                                            # (g, n, m)
        other = self._project(Q)                                             # (g, m, other) = diag(s) W^T
        discarded = self._discarded_energy(m)
        err = (discarded / self.total) ** 0.5 if self.total > 0.0 else 0.0
        norms = other.norm(dim=-1)                                           # (g, m) = s_j
        scale = torch.where(norms > 0, norms.rsqrt(), torch.zeros_like(norms))  # 1/sqrt(s_j); 0: empty
        other = other * scale[..., None]                                     # rows of norm sqrt(s_j)
        Q = Q * norms.sqrt()[:, None, :]                                     # columns of norm sqrt(s_j)
        if self.tall:
            return Factors(spatial=Q.mT, temporal=other.mT, rel_error=err)
        return Factors(spatial=other, temporal=Q, rel_error=err)

    def factors(self, m_per_group: int) -> Factors:
        """The rank-M split from the M leading eigenvectors (see the class docstring)."""
        m = min(m_per_group, self.rank_per_group)
        if self.dtype == torch.float32 and 0 < m < self.rank_per_group and not self._float32_resolves(m):
            self._decompose(torch.float64)   # the cut sits in float32's noise: redo it in float64
        return self._split(m)

    def _float32_resolves(self, m: int) -> bool:
        """Whether float32 separates the ``m`` kept components from the rest: every group's smallest kept
        eigenvalue is ``FLOAT32_MIN_RESOLUTION`` times above the float32 noise floor."""
        inner = self.rows if self.tall else self.cols
        noise = torch.finfo(torch.float32).eps * self.energies[:, 0] * inner ** 0.5
        return bool((self.energies[:, m - 1] >= FLOAT32_MIN_RESOLUTION * noise).all())


def spectrum(weight: torch.Tensor, groups: int, solver: Literal["gram", "exact"] = "exact"):
    """The kernel's spectrum: ``"exact"`` full float64 SVD (reference) or ``"gram"`` (fast, see the module)."""
    if solver == "gram":
        return GramSpectrum(weight, groups)
    if solver != "exact":
        from slimkit.errors import ConfigError, one_of
        raise ConfigError(f"solver={solver!r} is not known; use {one_of(SOLVERS)}")
    U, S, Vh = torch.linalg.svd(kernel_matrices(weight, groups), full_matrices=False)
    return Spectrum(U, S, Vh)


def _to_kernels(f: Factors, weight_shape: tuple, groups: int, mp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (g, m, cols) / (g, rows, m) -> conv kernels (g*Mp, i/g, 1, kh, kw) / (o, Mp, t, 1, 1), zero-padded."""
    o, ig, t, kh, kw = weight_shape
    og = o // groups
    m = f.spatial.shape[1]
    spatial = torch.zeros(groups, mp, ig * kh * kw, dtype=f.spatial.dtype)
    spatial[:, :m] = f.spatial
    temporal = torch.zeros(groups, og, t, mp, dtype=f.temporal.dtype)
    temporal[..., :m] = f.temporal.reshape(groups, og, t, m)
    return spatial.reshape(groups * mp, ig, 1, kh, kw), temporal.permute(0, 1, 3, 2).reshape(o, mp, t, 1, 1)


def kernels_from_factors(factors: Factors, weight: torch.Tensor, groups: int, pad_to: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(spatial, temporal)`` conv kernels of a split, in the weight's dtype and device.

    spatial: (g*Mp, i/g, 1, kh, kw); temporal: (o, Mp, t, 1, 1), where Mp = ``pad_to`` or M
    (components beyond M are zero).
    """
    mp = pad_to or factors.spatial.shape[1]
    spatial, temporal = _to_kernels(factors, tuple(weight.shape), groups, mp)
    like = dict(dtype=weight.dtype, device=weight.device)
    return spatial.to(**like), temporal.to(**like)


def split_kernel(weight: torch.Tensor, groups: int, m_per_group: int, spec=None,
                 pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-M split of a 3D kernel: ``(spatial, temporal)`` in the weight's dtype and device.

    spatial: (g*Mp, i/g, 1, kh, kw); temporal: (o, Mp, t, 1, 1), where Mp = ``pad_to`` or M
    (components beyond M, or beyond the available rank, are zero). ``spec``: a :func:`spectrum`
    (default: the exact one).
    """
    spec = spec or spectrum(weight, groups)
    return kernels_from_factors(spec.factors(m_per_group), weight, groups, pad_to or m_per_group)


def split_kernel_through_relu(weight: torch.Tensor, groups: int, width_per_group: int, spec=None
                              ) -> tuple[torch.Tensor, torch.Tensor, Factors]:
    """A split of width M that stays exact through a ReLU between the two kernels.

    Keeps K = M // 2 components and gives each two channels, +s_j and -s_j, with temporal weights
    +t_j and -t_j: t relu(s x) - t relu(-s x) = t s x, so temporal(relu(spatial(x))) is the rank-K
    approximation of the 3D conv (an odd channel left over is zero). Returns the kernels (shapes as
    :func:`split_kernel` with Mp = M) and the rank-K factors (their ``rel_error`` is the block's).
    """
    spec = spec or spectrum(weight, groups)
    f = spec.factors(width_per_group // 2)
    paired = Factors(torch.cat([f.spatial, -f.spatial], 1), torch.cat([f.temporal, -f.temporal], 2), f.rel_error)
    spatial, temporal = kernels_from_factors(paired, weight, groups, width_per_group)
    return spatial, temporal, f

