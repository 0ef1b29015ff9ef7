"""(2+1)D decomposition of 3D convolutions (R(2+1)D, P3D), data-free from trained weights.

    model = slimkit.apply(r3d, "r2plus1d", rank="match", init="svd")
    print(model.r2plus1d_report)
"""
from .config import R2Plus1DConfig
from .modules import Conv2Plus1D, P3DParallel, P3DResidual
from .report import ConversionReport, LayerReport
from .svd import full_rank, matched_rank, split_kernel
from .transform import apply_r2plus1d, conversion_report

__all__ = ["R2Plus1DConfig", "Conv2Plus1D", "P3DParallel", "P3DResidual", "ConversionReport",
           "LayerReport", "apply_r2plus1d", "conversion_report", "matched_rank", "full_rank", "split_kernel"]
