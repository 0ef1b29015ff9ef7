"""The fast (Gram) SVD solver beside the exact reference: same truncation, same reconstruction error within
1e-4 (relative), float32 only where float32 resolves the cut; the +/- pair split through a ReLU; config v1."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit
from slimkit_video.r2plus1d import svd
from slimkit_video.r2plus1d.svd import GramSpectrum, kernel_matrices, matched_rank, spectrum


def kernel(o: int, i: int, t: int = 3, k: int = 3, groups: int = 1, alpha: float | None = None, seed: int = 0):
    """A random (o, i/groups, t, k, k) kernel; with ``alpha`` its spectrum is s_j ~ j^-alpha (trained-like)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(o, i // groups, t, k, k, generator=g)
    if alpha is None:
        return w
    A = kernel_matrices(w, groups)
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    S = torch.arange(1, S.shape[1] + 1, dtype=torch.float64) ** -alpha * S[:, :1]
    A = U @ torch.diag_embed(S) @ Vh
    og = o // groups
    w = A.reshape(groups, og, t, i // groups, k, k).permute(0, 1, 3, 2, 4, 5)
    return w.reshape(o, i // groups, t, k, k).float()


def actual_error(w: torch.Tensor, groups: int, f) -> float:
    A = kernel_matrices(w, groups)
    return float((A - f.temporal.double() @ f.spatial.double()).norm() / A.norm())


CASES = [  # (o, i, t, k, groups, alpha, m): small float64 sides, float32 sides >= 256, tall, grouped, steep
    (16, 8, 3, 3, 1, None, 20),
    (96, 96, 3, 3, 1, None, matched_rank(96, 96, 3, 3, 3)),          # Gram side 288: float32
    (128, 64, 3, 3, 1, 0.5, matched_rank(64, 128, 3, 3, 3)),         # trained-like spectrum, float32
    (128, 64, 3, 3, 1, 1.0, matched_rank(64, 128, 3, 3, 3)),         # steep: the cut is in float32's noise
    (64, 3, 3, 7, 1, None, 45),                                      # tall (rows 192 > cols 147): the stem
    (24, 12, 3, 3, 4, None, 5),                                      # grouped
    (12, 6, 5, 3, 1, None, 1000),                                    # beyond full rank: exact
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_gram_solver_agrees_with_the_exact_svd(case):
    o, i, t, k, groups, alpha, m = case
    w = kernel(o, i, t, k, groups, alpha)
    exact, fast = spectrum(w, groups, "exact"), spectrum(w, groups, "gram")
    m = min(m, exact.rank_per_group)
    fe, ff = exact.factors(m), fast.factors(m)
    # the reported error is the error of the factors built, and both equal the Eckart-Young optimum
    assert abs(ff.rel_error - fe.rel_error) <= 1e-4 * fe.rel_error + 1e-7
    assert abs(actual_error(w, groups, ff) - fe.rel_error) <= 1e-4 * fe.rel_error + 1e-6
    assert abs(actual_error(w, groups, fe) - fe.rel_error) <= 1e-9
    assert ff.spatial.shape == fe.spatial.shape and ff.temporal.shape == fe.temporal.shape
    # balanced like the reference: component j has norm sqrt(s_j) on both sides
    assert torch.allclose(ff.spatial.double().norm(dim=-1), ff.temporal.double().norm(dim=-2), rtol=1e-4, atol=1e-6)
    assert torch.allclose(fast.S[:, :m].double(), exact.S[:, :m], rtol=1e-3, atol=1e-5 * exact.S.max().item())


def test_float32_only_where_it_resolves_the_cut():
    flat = GramSpectrum(kernel(128, 64), 1)
    assert flat.dtype == torch.float32
    flat.factors(matched_rank(64, 128, 3, 3, 3))
    assert flat.dtype == torch.float32
    steep = GramSpectrum(kernel(128, 64, alpha=1.0), 1)
    steep.factors(matched_rank(64, 128, 3, 3, 3))
    assert steep.dtype == torch.float64                       # redone: float32 cannot separate the cut
    assert GramSpectrum(kernel(16, 8), 1).dtype == torch.float64             # small: float64 from the start
    assert GramSpectrum(kernel(128, 64).double(), 1).dtype == torch.float64  # float64 weights stay float64


def test_energy_rank_and_split_kernel_agree_between_solvers():
    w = kernel(32, 16, alpha=0.5)
    exact, fast = spectrum(w, 1, "exact"), spectrum(w, 1, "gram")
    for fraction in (0.5, 0.9, 0.99):
        assert fast.energy_rank(fraction) == exact.energy_rank(fraction)
    sp_e, tm_e = svd.split_kernel(w, 1, 30, exact)
    sp_f, tm_f = svd.split_kernel(w, 1, 30, fast)
    x = torch.randn(1, 16, 5, 9, 9)
    ref = nn.functional.conv3d(nn.functional.conv3d(x, sp_e, padding=(0, 1, 1)), tm_e, padding=(1, 0, 0))
    out = nn.functional.conv3d(nn.functional.conv3d(x, sp_f, padding=(0, 1, 1)), tm_f, padding=(1, 0, 0))
    assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    with pytest.raises(slimkit.ConfigError, match="solver='fast'"):
        spectrum(w, 1, "fast")


def test_a_whole_network_converts_the_same_with_either_solver():
    torch.manual_seed(0)
    model = slimkit.build_model("r3d-18", depth=10, width=16, num_classes=3).eval()   # layer4: Gram side 384
    twin = copy.deepcopy(model)
    x = torch.randn(1, 3, 4, 32, 32)
    fast = slimkit.apply(model, "r2plus1d").eval()
    exact = slimkit.apply(twin, "r2plus1d", solver="exact").eval()
    assert fast.r2plus1d_report.solver == "gram" and exact.r2plus1d_report.solver == "exact"
    for f, e in zip(fast.r2plus1d_report.layers, exact.r2plus1d_report.layers):
        assert f.rank == e.rank and abs(f.rel_error - e.rel_error) <= 1e-4 * e.rel_error
    with torch.no_grad():
        a, b = fast(x), exact(x)
    assert (a - b).abs().max().item() <= 1e-4 * b.abs().max().item()


def test_split_through_relu_is_exact_in_eval_mode():
    conv = nn.Conv3d(6, 10, 3, padding=1, bias=False)
    w = conv.weight.detach()
    sp, tm, f = svd.split_kernel_through_relu(w, 1, 9, spectrum(w, 1, "gram"))   # odd width: 4 pairs + 1 zero
    assert sp.shape == (9, 6, 1, 3, 3) and tm.shape == (10, 9, 3, 1, 1) and f.spatial.shape[1] == 4
    assert sp[8].abs().max() == 0 and tm[:, 8].abs().max() == 0
    x = torch.randn(2, 6, 5, 7, 7)
    through = nn.functional.conv3d(torch.relu(nn.functional.conv3d(x, sp, padding=(0, 1, 1))), tm, padding=(1, 0, 0))
    low = svd.kernels_from_factors(f, w, 1)
    linear = nn.functional.conv3d(nn.functional.conv3d(x, low[0], padding=(0, 1, 1)), low[1], padding=(1, 0, 0))
    assert (through - linear).abs().max().item() <= 1e-5 * linear.abs().max().item()


def test_layout_torchvision_config_and_version_1_configs():
    with pytest.raises(slimkit.ConfigError, match="rank=12 has no effect with layout='torchvision'"):
        slimkit.make_config("r2plus1d", layout="torchvision", rank=12)
    with pytest.raises(slimkit.ConfigError, match="variant 'p3d-c'"):
        slimkit.make_config("r2plus1d", layout="torchvision", variant="p3d-c")
    cfg = slimkit.make_config("r2plus1d", layout="torchvision")
    assert cfg.with_mid_activation and cfg.to_dict()["version"] == 2 and cfg.solver == "gram"
    old = {"type": "r2plus1d", "version": 1, "rank": "match", "init": "svd", "variant": "r2plus1d",
           "mid_activation": False, "exclude": []}
    back = slimkit.load_config(old)
    assert back.layout == "per-conv" and back.solver == "gram"
    # convs outside any residual block take the stem width; a block shares its first conv's width
    net = nn.Sequential(nn.Conv3d(3, 64, (3, 7, 7), padding=(1, 3, 3)), nn.ReLU())
    out = slimkit.apply(net, "r2plus1d", layout="torchvision", init="random")
    assert out[0].mid_channels == 45 and isinstance(out[0].mid[0], nn.BatchNorm3d)
