"""Options of the ``r2plus1d`` technique: factorise 3D convolutions into spatial + temporal ones."""
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Union

from slimkit import ConfigError, TechniqueConfig

VARIANTS = ("r2plus1d", "p3d-a", "p3d-b", "p3d-c")


@dataclass
class R2Plus1DConfig(TechniqueConfig):
    """Replace every ``nn.Conv3d`` with a temporal kernel t > 1 and a spatial kernel k > 1.

    rank: width M of the intermediate (spatial -> temporal) channels, per convolution.
        ``"match"``: M = floor(t*kh*kw*N_in*N_out / (kh*kw*N_in + t*N_out)), the width that
        keeps the parameter count of that convolution (R(2+1)D); ``"full"``: min(o*t, i*kh*kw),
        exact; an int: that M for every layer (clamped at full rank, reported); a float in
        (0, 1]: the smallest M keeping that fraction of the kernel's spectral energy (sum of s^2).
        Only variants ``"r2plus1d"`` and ``"p3d-a"`` have a width to choose: applying another variant
        with a rank other than ``"match"`` is refused.
    init: ``"svd"`` sets both kernels from the truncated SVD of the trained 3D kernel (the best
        rank-M approximation); ``"random"`` uses PyTorch's default initialisation.
    variant: ``"r2plus1d"`` and ``"p3d-a"``: T(S(x)) (same operator); ``"p3d-b"``: S(x) + T(x),
        cannot be SVD-initialised (random init with a warning); ``"p3d-c"``: S(x) + T(S(x)),
        SVD-initialised with M fixed to the output width.
    mid_activation: insert BatchNorm3d + ReLU between the spatial and temporal convolution (as in
        R(2+1)D); the block is then nonlinear and the SVD only an initialisation.
    exclude: fnmatch patterns of module names to leave as 3D convolutions (e.g. ``["stem.*"]``); a
        pattern that matches no Conv3d of the model is refused when applying.
    layout: ``"per-conv"`` (default): the width M is chosen per convolution by ``rank``.
        ``"torchvision"``: torchvision's ``r2plus1d_18`` layout, which is weight-compatible with its
        checkpoints: one M per residual block (the parameter-matched width of the block's first
        convolution, reused by the others), the stem (a convolution outside any block) at torchvision's
        hand-set 45 per 64 output channels, and BatchNorm + ReLU between the two kernels (implied). With
        ``init="svd"`` each block keeps M // 2 SVD components, each as a +/- channel pair so that the
        ReLU passes it unchanged, with an identity mid BatchNorm: the block is then the rank-M//2
        approximation of the 3D convolution in eval mode, and the report gives its error. Applied to
        R3D-18 it gives exactly torchvision's parameter count (31,505,325 with 400 classes). Only
        variants ``"r2plus1d"`` / ``"p3d-a"`` with the default ``rank`` have this layout.
    solver: how the SVD is computed. ``"gram"`` (default): eigendecomposition of the smaller Gram matrix,
        float32 for large kernels where the error allows (an order of magnitude faster on R3D-18);
        ``"exact"``: the full float64 SVD (the reference; same truncation, same error within 1e-4).
    """

    technique: ClassVar[str] = "r2plus1d"
    version: ClassVar[int] = 2

    rank: Union[Literal["match", "full"], int, float] = "match"
    init: Literal["svd", "random"] = "svd"
    variant: Literal["r2plus1d", "p3d-a", "p3d-b", "p3d-c"] = "r2plus1d"
    mid_activation: bool = False
    exclude: list[str] = field(default_factory=list)
    layout: Literal["per-conv", "torchvision"] = "per-conv"
    solver: Literal["gram", "exact"] = "gram"

    @classmethod
    def migrate(cls, data: dict, from_version: int) -> dict:
        """Version 1 had neither ``layout`` nor ``solver``; its defaults are version 2's."""
        return data

    def validate(self) -> None:
        if isinstance(self.rank, int) and self.rank < 1:
            raise ConfigError(f"rank={self.rank} must be at least 1; pass a positive int, a float "
                              f"energy fraction in (0, 1], 'match' or 'full'")
        if isinstance(self.rank, float) and not 0.0 < self.rank <= 1.0:
            raise ConfigError(f"rank={self.rank} as a float is a spectral-energy fraction and must lie "
                              f"in (0, 1]; pass e.g. 0.9, or an int for an explicit width")
        if self.variant == "p3d-b" and self.mid_activation:
            raise ConfigError("mid_activation has no meaning for variant 'p3d-b' (two parallel "
                              "branches, nothing in between); leave mid_activation=False")
        if self.layout == "torchvision" and self.variant not in ("r2plus1d", "p3d-a"):
            raise ConfigError(f"layout='torchvision' is a T(S(x)) block with BatchNorm + ReLU in between, which "
                              f"variant {self.variant!r} is not; use variant 'r2plus1d' with it, or leave layout out")
        if self.layout == "torchvision" and self.rank != "match":
            raise ConfigError(f"rank={self.rank!r} has no effect with layout='torchvision' (the layout sets one width "
                              f"per block); leave rank out, or use layout='per-conv' to choose the width")

    @property
    def with_mid_activation(self) -> bool:
        """BatchNorm + ReLU between the kernels: asked for, or implied by ``layout="torchvision"``."""
        return self.mid_activation or self.layout == "torchvision"
