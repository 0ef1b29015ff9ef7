"""(2+1)D decomposition of 3D convolutions (R(2+1)D, P3D), data-free from trained weights.

    r3d = slimkit.build_model("r3d-18", num_classes=400)          # or your trained 3D CNN
    model = slimkit.apply(r3d, "r2plus1d", rank="match", init="svd")
    print(model.r2plus1d_report)      # per layer: M, full rank, params before/after, rel. error
    r21 = slimkit.build_model("r2plus1d-18", width=64, depth=18)  # from scratch, per-conv matched M
    tv = slimkit.apply(r3d, "r2plus1d", layout="torchvision")     # torchvision's r2plus1d_18 layout

Which variants can be SVD-initialised:
  * ``r2plus1d`` / ``p3d-a``  T(S(x)): yes - the truncated SVD of the kernel matrix
    A[(o,t),(i,h,w)] gives both factors; exact at full rank (without mid activation).
  * ``p3d-c``  S(x) + T(S(x)) = T'(S(x)) with T' = T + identity at the centre tap: yes, as a
    rank-``out_channels`` factorisation (exact when out_channels >= full rank).
  * ``p3d-b``  S(x) + T(x): no - its kernel is a spatial kernel on the centre frame plus a
    temporal kernel on the centre pixel, a sum of restricted-support kernels rather than a
    product of factors; it falls back to random init with a warning.
  With ``mid_activation=True`` (BatchNorm + ReLU in between) the SVD is only an initialisation.
  With ``layout="torchvision"`` (one width per block, BatchNorm + ReLU in between, weight-compatible with
  torchvision's ``r2plus1d_18``) each block keeps M // 2 components as +/- pairs through the ReLU: the
  rank-M//2 approximation in eval mode, its error in the report.

The SVDs use the fast Gram solver (``solver="gram"``, float32 where it resolves the cut); ``solver="exact"``
is the float64 reference (``svd``; ``slimkit bench r2plus1d-svd-speed`` compares them).
"""
from .config import R2Plus1DConfig
from .modules import Conv2Plus1D, P3DParallel, P3DResidual
from .report import ConversionReport, LayerReport
from .svd import full_rank, matched_rank, spectrum, split_kernel, split_kernel_through_relu
from .transform import apply_r2plus1d, conversion_report

__all__ = ["R2Plus1DConfig", "Conv2Plus1D", "P3DParallel", "P3DResidual", "ConversionReport",
           "LayerReport", "apply_r2plus1d", "conversion_report", "matched_rank", "full_rank", "split_kernel",
           "split_kernel_through_relu", "spectrum"]
