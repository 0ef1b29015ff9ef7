"""(2+1)D blocks: a t x k x k convolution split into a spatial 1 x k x k and a temporal t x 1 x 1 one.

All blocks take (N, C_in, T, H, W) clips and return (N, C_out, T', H', W') with exactly the
output shape of the ``nn.Conv3d`` they stand for (same stride, padding, dilation, groups).

* ``Conv2Plus1D``  R(2+1)D / P3D-A: y = T(mid(S(x))), S: in -> M, T: M -> out.
* ``P3DParallel``  P3D-B: y = S(x) + T(x), both in -> out.
* ``P3DResidual``  P3D-C: z = S(x); y = T(mid(z)) + z (temporally strided), S: in -> out, T: out -> out.

The spatial convolution never has a bias (so that zero temporal padding of its output equals zero
padding of the input, which makes the split exact); the bias sits on the temporal convolution.
"""
from typing import Union

import torch.nn.functional as F
from torch import nn

from slimkit.errors import ConfigError, UnsupportedModelError

Padding = Union[str, tuple]


def triple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def normalise_padding(padding, kernel, dilation) -> Padding:
    """Numeric (pt, ph, pw) where possible; ``'same'`` stays a string only when it is asymmetric."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0)
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        if all(x % 2 == 0 for x in totals):
            return tuple(x // 2 for x in totals)
        return padding
    return triple(padding)


def _split_pad(padding: Padding) -> tuple[Padding, Padding]:
    if isinstance(padding, str):
        return padding, padding
    pt, ph, pw = padding
    return (0, ph, pw), (pt, 0, 0)


class TemporalConv3d(nn.Conv3d):
    """A (t, 1, 1) ``nn.Conv3d`` (same weights and state dict) that runs as a 2D convolution with a
    (t, 1) kernel over the (N, C, T, H*W) view of the clip when it can (zero padding, no spatial
    stride or padding): on CPU, PyTorch's Conv3d path for t x 1 x 1 kernels is several times slower
    than the equivalent conv2d at the same Mult-Adds."""

    def forward(self, x):
        if (self.padding_mode != "zeros" or isinstance(self.padding, str) or x.dim() != 5
                or self.kernel_size[1:] != (1, 1) or self.stride[1:] != (1, 1) or self.padding[1:] != (0, 0)):
            return super().forward(x)
        n, c, t, h, w = x.shape
        y = F.conv2d(x.reshape(n, c, t, h * w), self.weight.squeeze(-1), self.bias, (self.stride[0], 1),
                     (self.padding[0], 0), (self.dilation[0], 1), self.groups)
        return y.reshape(n, y.shape[1], y.shape[2], h, w)


def _mid(channels: int, on: bool) -> nn.Module:
    return nn.Sequential(nn.BatchNorm3d(channels), nn.ReLU(inplace=True)) if on else nn.Identity()


def centred(kernel, dilation, padding: Padding, dims=(0, 1, 2)) -> bool:
    """True when the padding on ``dims`` is numeric and centres the kernel: p = d*(k-1)/2."""
    if isinstance(padding, str):
        return False
    return all(2 * padding[i] == dilation[i] * (kernel[i] - 1) for i in dims)


class Conv2Plus1D(nn.Module):
    """R(2+1)D block (also P3D-A): spatial Conv3d(in, M, (1,kh,kw), stride (1,sh,sw), padding (0,ph,pw)),
    optional BatchNorm3d + ReLU, temporal Conv3d(M, out, (t,1,1), stride (st,1,1), padding (pt,0,0)).

    ``mid_channels`` (M) must be divisible by ``groups``; dilation and padding_mode carry over.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, kernel_size=3, stride=1,
                 padding: Padding = 0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", mid_activation: bool = False):
        super().__init__()
        t, kh, kw = k = triple(kernel_size)
        st, sh, sw = triple(stride)
        dt, dh, dw = d = triple(dilation)
        if mid_channels < 1 or mid_channels % groups:
            raise ConfigError(f"mid_channels={mid_channels} must be a positive multiple of groups={groups}")
        padding = normalise_padding(padding, k, d)
        ps, pt = _split_pad(padding)
        self.spatial = nn.Conv3d(in_channels, mid_channels, (1, kh, kw), (1, sh, sw), ps, (1, dh, dw),
                                 groups, bias=False, padding_mode=padding_mode)
        self.mid = _mid(mid_channels, mid_activation)
        self.temporal = TemporalConv3d(mid_channels, out_channels, (t, 1, 1), (st, 1, 1), pt, (dt, 1, 1),
                                  groups, bias=bias, padding_mode=padding_mode)

    @property
    def mid_channels(self) -> int:
        return self.spatial.out_channels

    def forward(self, x):
        return self.temporal(self.mid(self.spatial(x)))


class P3DParallel(nn.Module):
    """P3D-B: S(x) + T(x); S = Conv3d(in, out, (1,kh,kw), stride (st,sh,sw)), T = Conv3d(in, out, (t,1,1),
    stride (st,sh,sw)). Needs centred padding on every axis (p = d*(k-1)/2) so both branches align."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding: Padding = 1,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros"):
        super().__init__()
        t, kh, kw = k = triple(kernel_size)
        s = triple(stride)
        dt, dh, dw = d = triple(dilation)
        padding = normalise_padding(padding, k, d)
        if not centred(k, d, padding):
            raise UnsupportedModelError(
                f"variant 'p3d-b' needs centred padding d*(k-1)/2 on every axis to align its two branches, "
                f"got padding={padding} for kernel {k}, dilation {d}; use variant 'r2plus1d' for this conv")
        pt, ph, pw = padding
        self.spatial = nn.Conv3d(in_channels, out_channels, (1, kh, kw), s, (0, ph, pw), (1, dh, dw),
                                 groups, bias=False, padding_mode=padding_mode)
        self.temporal = TemporalConv3d(in_channels, out_channels, (t, 1, 1), s, (pt, 0, 0), (dt, 1, 1),
                                  groups, bias=bias, padding_mode=padding_mode)

    def forward(self, x):
        return self.spatial(x) + self.temporal(x)


class P3DResidual(nn.Module):
    """P3D-C: z = S(x); y = T(mid(z)) + z[:, :, ::st]; S = Conv3d(in, out, (1,kh,kw), stride (1,sh,sw)),
    T = Conv3d(out, out, (t,1,1), stride (st,1,1)). Needs centred temporal padding pt = dt*(t-1)/2.

    Without ``mid``, the operator is T'(S(x)) with T' = T + identity at the centre tap: a
    composition of width ``out``, so it can be SVD-initialised (see ``transform``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding: Padding = 1,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 mid_activation: bool = False):
        super().__init__()
        t, kh, kw = k = triple(kernel_size)
        st, sh, sw = triple(stride)
        dt, dh, dw = d = triple(dilation)
        padding = normalise_padding(padding, k, d)
        if not centred(k, d, padding, dims=(0,)):
            raise UnsupportedModelError(
                f"variant 'p3d-c' needs centred temporal padding dt*(t-1)/2 for its skip path, got "
                f"padding={padding} for kernel {k}, dilation {d}; use variant 'r2plus1d' for this conv")
        pt, ph, pw = padding
        self.time_stride = st
        self.centre_tap = pt // dt
        self.spatial = nn.Conv3d(in_channels, out_channels, (1, kh, kw), (1, sh, sw), (0, ph, pw), (1, dh, dw),
                                 groups, bias=False, padding_mode=padding_mode)
        self.mid = _mid(out_channels, mid_activation)
        self.temporal = TemporalConv3d(out_channels, out_channels, (t, 1, 1), (st, 1, 1), (pt, 0, 0), (dt, 1, 1),
                                  groups, bias=bias, padding_mode=padding_mode)

    def forward(self, x):
        z = self.spatial(x)
        return self.temporal(self.mid(z)) + z[:, :, :: self.time_stride]


BLOCKS = (Conv2Plus1D, P3DParallel, P3DResidual)
