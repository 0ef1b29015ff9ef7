"""Stream cells: the modules that carry state from one frame to the next.

A *cell* replaces one temporal operation of an offline model by its one-frame-at-a-time form:

- :class:`ShiftCell` replaces a causal TSM shift (``direction="past"``). Offline, channels
  ``[0, fold)`` of frame ``t`` come from frame ``t-1``; online the cell keeps ``x[:, :fold]`` of
  the previous frame as its buffer, feeds ``cat(buffer, x[:, fold:])`` to the wrapped module and
  stores the new ``x[:, :fold]``. Buffer shape ``(B, C // shift_div, H, W)``.
- :class:`CausalConvCell` replaces a :class:`CausalConv3d` (temporal kernel ``kt``, dilation
  ``dt``, left padding ``(kt-1)*dt``), as MoViNet's stream buffer does: ``full = cat(buffer, x)``
  along time, the new buffer is the last ``(kt-1)*dt`` frames of ``full``, and the convolution
  runs without temporal padding. Buffer shape ``(B, C_in, (kt-1)*dt, H, W)``.

Each cell runs in one of two modes, chosen by its stream:

- *stateful* (``io is None``, what ``stream.step`` uses): the buffer lives in the cell, is
  allocated once (zeros) for a batch of ``B`` streams and updated in place (no allocation besides
  the concatenation the wrapped op needs).
- *functional* (``io`` is a :class:`BufferIO`, what ``stream(frame, *buffers)`` and ONNX export
  use): the buffer is read from ``io.inputs[index]`` (zeros when ``None``) and the new one is
  written to ``io.outputs[index]``; nothing is kept in the cell.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.errors import ConfigError, ShapeError


class BufferIO:
    """Buffers in and out of one functional call, indexed by cell."""

    __slots__ = ("inputs", "outputs")

    def __init__(self, inputs):
        self.inputs = list(inputs)
        self.outputs = [None] * len(self.inputs)


def _batch_error(name: str, have: tuple, got: tuple) -> ShapeError:
    return ShapeError(
        f"stream cell {name!r} holds state of shape {have} but got a frame batch giving {got}; "
        f"call stream.reset() before changing the number of streams or the frame size")


class StreamCell(nn.Module):
    """Base class: a module with a stream buffer (``state``) and a functional slot (``index``)."""

    def __init__(self) -> None:
        super().__init__()
        self.state: Optional[torch.Tensor] = None
        self.io: Optional[BufferIO] = None
        self.index = 0
        self.cell_name = ""

    def reset_state(self, stream: Optional[int] = None) -> None:
        """Forget the past: all streams (drop the buffer) or one stream index (zero its row)."""
        if stream is None or self.state is None:
            self.state = None
        else:
            self.state[stream].zero_()

    def _read(self, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        buf = self.io.inputs[self.index]
        if buf is None:
            return like.new_zeros(shape)
        if not torch.jit.is_tracing() and tuple(buf.shape) != tuple(shape):
            raise ShapeError(f"buffer {self.index} ({self.cell_name!r}) must have shape {tuple(shape)}, "
                             f"got {tuple(buf.shape)}; build buffers with stream.init_buffers(...)")
        return buf


class ShiftCell(StreamCell):
    """Online form of a causal temporal shift wrapping ``net``: buffer ``(B, C//shift_div, H, W)``."""

    def __init__(self, net: nn.Module, shift_div: int) -> None:
        super().__init__()
        self.net = net
        self.shift_div = int(shift_div)

    def extra_repr(self) -> str:
        return f"shift_div={self.shift_div}"

    def forward(self, x: torch.Tensor, *args, **kwargs):
        fold = x.shape[1] // self.shift_div
        if fold == 0:
            return self.net(x, *args, **kwargs)
        if self.io is None:
            buf = self.state
            if buf is None:
                buf = self.state = x.new_zeros((x.shape[0], fold) + tuple(x.shape[2:]))
            elif buf.shape[0] != x.shape[0] or buf.shape[2:] != x.shape[2:]:
                raise _batch_error(self.cell_name, tuple(buf.shape),
                                   (x.shape[0], fold) + tuple(x.shape[2:]))
            shifted = torch.cat((buf, x[:, fold:]), 1)
            buf.copy_(x[:, :fold])
        else:
            buf = self._read((x.shape[0], fold) + tuple(x.shape[2:]), x)
            shifted = torch.cat((buf, x[:, fold:]), 1)
            self.io.outputs[self.index] = x[:, :fold].clone()
        return self.net(shifted, *args, **kwargs)


def _triple(v) -> tuple:
    if isinstance(v, int):
        return (v, v, v)
    return tuple(v)


class CausalConv3d(nn.Conv3d):
    """A ``Conv3d`` that only looks back in time: left temporal padding ``(kt-1)*dilation_t``.

    Input ``(N, C_in, T, H, W)`` -> output ``(N, C_out, T, H', W')``: output frame ``t`` depends
    on input frames ``t-(kt-1)*dt .. t`` only (zeros before the first frame), so it can run
    online with a stream buffer of the last ``(kt-1)*dt`` input frames (MoViNet). ``padding``
    is the *spatial* padding (int or ``(ph, pw)``); the temporal stride must be 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, **kwargs) -> None:
        kt, kh, kw = _triple(kernel_size)
        st, sh, sw = _triple(stride)
        dt, dh, dw = _triple(dilation)
        if st != 1:
            raise ConfigError(f"CausalConv3d needs temporal stride 1 to run online, got {st}; "
                              f"subsample frames before the network instead")
        ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)[-2:]
        super().__init__(in_channels, out_channels, (kt, kh, kw), (1, sh, sw), (0, ph, pw),
                         (dt, dh, dw), groups, bias, **kwargs)
        self.causal_pad = (kt - 1) * dt

    @classmethod
    def from_conv3d(cls, conv: nn.Conv3d) -> "CausalConv3d":
        """A causal copy of ``conv`` (same weights; its temporal padding becomes left-only)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding[1:], conv.dilation, conv.groups, conv.bias is not None,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        new.load_state_dict(conv.state_dict())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.causal_pad:
            x = F.pad(x, (0, 0, 0, 0, self.causal_pad, 0))
        return super().forward(x)


class CausalConvCell(StreamCell):
    """Online form of a :class:`CausalConv3d`: buffer ``(B, C_in, (kt-1)*dt, H, W)``."""

    def __init__(self, conv: CausalConv3d) -> None:
        super().__init__()
        self.conv = conv
        self.pad = conv.causal_pad

    def extra_repr(self) -> str:
        return f"buffer_frames={self.pad}"

    def _conv(self, full: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv3d(full, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        if p == 0:
            return self._conv(x)
        shape = (x.shape[0], x.shape[1], p) + tuple(x.shape[3:])
        if self.io is None:
            buf = self.state
            if buf is None:
                buf = self.state = x.new_zeros(shape)
            elif tuple(buf.shape) != shape:
                raise _batch_error(self.cell_name, tuple(buf.shape), shape)
            full = torch.cat((buf, x), 2)
            buf.copy_(full[:, :, -p:])
        else:
            buf = self._read(shape, x)
            full = torch.cat((buf, x), 2)
            self.io.outputs[self.index] = full[:, :, -p:].clone()
        return self._conv(full)
