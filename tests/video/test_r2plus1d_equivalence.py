"""(2+1)D split of Conv3d: full rank reproduces the 3D convolution; truncation is the SVD optimum."""
import pytest
import torch
from torch import nn

import slimkit
from slimkit_video.r2plus1d import Conv2Plus1D, R2Plus1DConfig, apply_r2plus1d, full_rank
from slimkit_video.r2plus1d.svd import kernel_matrices

# (in, out, kernel, stride, padding, dilation, groups, padding_mode)
CASES = [
    (5, 7, 3, 1, 1, 1, 1, "zeros"),
    (3, 16, (3, 7, 7), (1, 2, 2), (1, 3, 3), 1, 1, "zeros"),                # R3D stem
    (6, 9, (5, 3, 2), (2, 3, 1), (2, 0, 1), (1, 2, 1), 1, "zeros"),         # odd everything
    (4, 6, (3, 3, 3), 1, "same", (2, 1, 1), 1, "zeros"),                    # string padding, dilation
    (4, 6, (2, 2, 3), 1, "same", 1, 1, "zeros"),                            # asymmetric 'same'
    (8, 12, 3, 2, 1, 1, 4, "zeros"),                                        # grouped, strided
    (6, 6, 3, 1, 1, 1, 6, "zeros"),                                         # depthwise
    (4, 5, (2, 3, 3), (1, 2, 2), (1, 1, 0), 1, 1, "reflect"),               # non-zero padding mode
    (7, 3, (3, 5, 5), (2, 1, 1), (0, 2, 2), (2, 1, 1), 1, "replicate"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_full_rank_split_equals_conv3d(case):
    cin, cout, k, s, p, d, g, mode = case
    conv = nn.Conv3d(cin, cout, k, s, p, d, groups=g, padding_mode=mode)
    x = torch.randn(2, cin, 9, 11, 10)
    y = conv(x)
    block = apply_r2plus1d(conv, R2Plus1DConfig(rank="full"))
    assert isinstance(block, Conv2Plus1D)
    row = block.r2plus1d_report.layers[0]
    assert row.rank == full_rank(conv) and row.rel_error < 1e-6 and not row.clamped
    assert block.spatial.bias is None and block.temporal.bias is not None
    out = block(x)
    assert out.shape == y.shape
    assert (out - y).abs().max().item() <= 1e-4


def test_truncation_is_best_rank_m_and_error_matches_report():
    conv = nn.Conv3d(6, 8, 3, 1, 1)
    for m in (1, 5, 12):
        block = apply_r2plus1d(conv, R2Plus1DConfig(rank=m))
        # composed kernel = spatial then temporal, as a matrix [(o, t), (i, h, w)]
        sp = block.spatial.weight.detach().double().flatten(1)                   # (M, i*h*w)
        tm = block.temporal.weight.detach().double()[..., 0, 0]                   # (o, M, t)
        comp = torch.einsum("omt,mc->otc", tm, sp).reshape(8 * 3, -1)
        A = kernel_matrices(conv.weight, 1)[0]
        s = torch.linalg.svdvals(A)
        best = (s[m:] ** 2).sum().sqrt() / (s ** 2).sum().sqrt()                  # Eckart-Young
        err = (A - comp).norm() / A.norm()
        assert abs(err.item() - best.item()) < 1e-5
        assert abs(block.r2plus1d_report.layers[0].rel_error - best.item()) < 1e-6


def test_full_rank_conversion_of_a_whole_network_through_slimkit_apply():
    model = slimkit.build_model("r3d-18", depth=10, width=4, num_classes=3).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    ref = model(x)
    out = slimkit.apply(model, "r2plus1d", rank="full")(x)
    assert (out - ref).abs().max().item() <= 1e-4


def test_p3d_c_is_exact_when_out_channels_reach_full_rank():
    conv = nn.Conv3d(1, 12, 3, (2, 1, 1), 1)          # full rank min(36, 9) = 9 <= 12
    x = torch.randn(2, 1, 7, 9, 9)
    block = apply_r2plus1d(conv, R2Plus1DConfig(variant="p3d-c"))
    assert (block(x) - conv(x)).abs().max().item() <= 1e-4
    # below full rank, p3d-c equals the rank-out r2plus1d split (same best approximation)
    conv = nn.Conv3d(6, 5, 3, 1, 1)
    c = apply_r2plus1d(conv, R2Plus1DConfig(variant="p3d-c"))
    a = apply_r2plus1d(conv, R2Plus1DConfig(rank=5))
    x = torch.randn(1, 6, 5, 8, 8)
    assert (c(x) - a(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("stride,pad,dil,groups", [(1, 1, 1, 1), (2, 0, 1, 2), (3, 2, 2, 1)])
def test_temporal_conv_fast_path_matches_conv3d(stride, pad, dil, groups):
    from slimkit_video.r2plus1d.modules import TemporalConv3d
    fast = TemporalConv3d(4, 6, (3, 1, 1), (stride, 1, 1), (pad, 0, 0), (dil, 1, 1), groups)
    x = torch.randn(2, 4, 9, 5, 7, requires_grad=True)
    ref = nn.functional.conv3d(x, fast.weight, fast.bias, fast.stride, fast.padding, fast.dilation, groups)
    out = fast(x)
    assert out.shape == ref.shape and (out - ref).abs().max().item() <= 1e-5
    out.sum().backward()
    assert fast.weight.grad is not None and x.grad is not None
