"""TSM modules: ``TemporalShift`` (wraps a module, shifts its input) and ``TemporalPool``.

Both see frames flattened as ``(N*T, C, H, W)`` with ``T = n_segment`` frames per clip.
The shift is the only temporal operation of ``TemporalShift``; ``TemporalPool`` is separate
(online/streaming inference cannot use it, since it mixes future frames).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.errors import ConfigError, ShapeError

from .shift import INPLACE_MIN_NUMEL, shift_inplace_, temporal_shift, unshift_inplace_


def _exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    if is_exporting is not None and is_exporting():
        return True
    return torch.onnx.is_in_onnx_export()


class TemporalShift(nn.Module):
    """``forward(x) = net(temporal_shift(x, n_segment, shift_div, direction))``.

    ``net`` is the wrapped module: the residual branch's first conv (``place="blockres"``),
    the whole block (``place="block"``) or a targeted module (``target_modules``).
    Extra positional/keyword arguments go to ``net`` unchanged. Zero parameters, zero Mult-Adds.

    ``inplace=True`` (set by ``slimkit.apply`` for the built-in HF families, whose blocks never
    modify their input) lets inference skip the full-size copy: with gradients off, the moving
    channels are shifted inside ``x``, ``net`` runs, and ``x`` is restored bit for bit
    (``shift_inplace_``/``unshift_inplace_``). Outputs are identical to the copying path; with
    gradients on, while tracing/exporting/compiling, for non-contiguous input or for tensors
    under ``INPLACE_MIN_NUMEL`` elements (where one copy is cheaper) it copies.
    Only enable it for a ``net`` that does not modify its input in place.
    """

    def __init__(self, net: nn.Module, n_segment: int = 8, shift_div: int = 8, direction: str = "both",
                 inplace: bool = False):
        super().__init__()
        self.net = net
        self.n_segment = int(n_segment)
        self.shift_div = int(shift_div)
        self.direction = direction
        self.inplace = bool(inplace)

    def _can_shift_inplace(self, x: torch.Tensor) -> bool:
        return (self.inplace and x.numel() >= INPLACE_MIN_NUMEL and not torch.is_grad_enabled()
                and not x.requires_grad and x.is_contiguous()
                and not torch.jit.is_tracing() and not torch.jit.is_scripting()
                and not torch.compiler.is_compiling() and not _exporting())

    def _check_moves_channels(self, x: torch.Tensor) -> None:
        """Refuse an input so narrow that ``C // shift_div == 0``: the shift would move nothing (plain TSN)."""
        if torch.jit.is_tracing() or _exporting():
            return  # shapes are symbolic there; the eager forward before export checked them
        if x.dim() >= 2 and x.shape[1] < self.shift_div:
            raise ConfigError(
                f"a temporal shift with shift_div={self.shift_div} got an input of {x.shape[1]} channels, so "
                f"{x.shape[1]} // {self.shift_div} = 0 channels would move (plain TSN); apply tsm with "
                f"shift_div <= {x.shape[1]} or target wider layers")

    def forward(self, x: torch.Tensor, *args, **kwargs):
        self._check_moves_channels(x)
        if self._can_shift_inplace(x):
            token = shift_inplace_(x, self.n_segment, self.shift_div, self.direction)
            try:
                return self.net(x, *args, **kwargs)
            finally:
                unshift_inplace_(x, token)
        return self.net(temporal_shift(x, self.n_segment, self.shift_div, self.direction), *args, **kwargs)

    def extra_repr(self) -> str:
        return f"n_segment={self.n_segment}, shift_div={self.shift_div}, direction={self.direction!r}"


def temporal_pool(x: torch.Tensor, n_segment: int) -> torch.Tensor:
    """Max-pool ``(N*T, C, H, W)`` over time (kernel 3, stride 2, padding 1): ``(N*ceil(T/2), C, H, W)``."""
    nt = x.shape[0]
    if nt % n_segment != 0:
        raise ShapeError(
            f"batch {nt} is not divisible by n_segment={n_segment}; feed whole clips of {n_segment} frames")
    v = x.reshape(nt // n_segment, n_segment, *x.shape[1:]).transpose(1, 2)  # N, C, T, H, W
    v = F.max_pool3d(v, kernel_size=(3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0))
    return v.transpose(1, 2).reshape(-1, *x.shape[1:])


class TemporalPool(nn.Module):
    """``forward(x) = net(temporal_pool(x, n_segment))``: halves ``T`` before ``net`` (a stage)."""

    def __init__(self, net: nn.Module, n_segment: int = 8):
        super().__init__()
        self.net = net
        self.n_segment = int(n_segment)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        return self.net(temporal_pool(x, self.n_segment), *args, **kwargs)

    def extra_repr(self) -> str:
        return f"n_segment={self.n_segment}"
