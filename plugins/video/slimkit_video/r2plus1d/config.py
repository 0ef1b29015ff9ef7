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
    """

    technique: ClassVar[str] = "r2plus1d"
    version: ClassVar[int] = 1

    rank: Union[Literal["match", "full"], int, float] = "match"
    init: Literal["svd", "random"] = "svd"
    variant: Literal["r2plus1d", "p3d-a", "p3d-b", "p3d-c"] = "r2plus1d"
    mid_activation: bool = False
    exclude: list[str] = field(default_factory=list)

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
