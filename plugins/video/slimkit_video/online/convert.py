"""``to_online(model)``: run a causal video model one frame at a time with stream buffers.

An offline TSM model sees a whole clip ``(T, C, H, W)`` and shifts ``C // shift_div`` channels
of every shifted block one frame forward in time (``direction="past"``). Online, each shifted
block keeps those channels of the *previous* frame in a small buffer instead, so every new
frame costs exactly one 2D forward pass: the same per-frame outputs as the offline model on the
clip, at the cost of a single frame (no re-running of the last ``T`` frames).

Example: HF MobileNetV2 at 224x224 with ``slimkit.apply(m, "tsm", n_segment=8, direction="past")``
has 10 shifted blocks, so ``stream.buffer_shapes((3, 224, 224))`` lists 10 buffers, 27,048 floats
(106 KiB fp32) in all, exactly as the TSM online demo: ``(1, 3, 56, 56)``, 2 x ``(1, 4, 28, 28)``,
3 x ``(1, 8, 14, 14)``, 2 x ``(1, 12, 14, 14)``, 2 x ``(1, 20, 7, 7)``.

When to call ``stream.reset()``: whenever the frames stop being one continuous video, i.e. at
a scene cut, when a new clip or file starts, when the camera changes, or after a long pause.
Offline, the first frame of a clip sees zeros in its shifted channels; a reset gives the next
frame exactly that. ``stream.reset(i)`` resets only stream ``i`` of a batch.
"""
from __future__ import annotations

import copy
import operator
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from slimkit.errors import ConfigError, ShapeError, UnsupportedModelError

from ..classifier import VideoClassifier
from ..tsm.modules import TemporalPool, TemporalShift
from .cells import BufferIO, CausalConv3d, CausalConvCell, ShiftCell, StreamCell

LAYOUTS = ("frames", "clip", "video")

CAUSAL_HOWTO = ("train a causal one with slimkit.apply(model, 'tsm', direction='past', ...) on the "
                "image backbone and fine-tune it on clips (slimkit video train --direction past), "
                "then convert that model")


def _time_extent(v) -> int:
    return v if isinstance(v, int) else v[0]


def _check_module(name: str, m: nn.Module) -> None:
    """Refuse temporal operations that read future frames or whole clips."""
    label = name or "the model"
    if isinstance(m, TemporalShift) and m.direction != "past":
        raise UnsupportedModelError(
            f"{label!r} is a temporal shift with direction={m.direction!r}, which reads the next frame "
            f"(channels [0, C//{m.shift_div}) come from frame t+1), so it cannot run online; {CAUSAL_HOWTO}")
    if isinstance(m, TemporalPool):
        raise UnsupportedModelError(
            f"{label!r} is a TSM temporal pool, which mixes neighbouring (also future) frames and "
            f"halves T, so it cannot run online; apply tsm with temporal_pool=False and fine-tune")
    if isinstance(m, nn.Conv3d) and not isinstance(m, CausalConv3d):
        kt, pt, st = m.kernel_size[0], m.padding[0] if not isinstance(m.padding, str) else m.padding, m.stride[0]
        if kt > 1 or st > 1:
            raise UnsupportedModelError(
                f"Conv3d {label!r} has temporal kernel {kt} (padding {pt!r}, stride {st}): with symmetric "
                f"or no left-only padding it reads future frames or shifts time, so it cannot run online; "
                f"build it causal with slimkit_video.online.CausalConv3d (left padding kt-1, temporal "
                f"stride 1; CausalConv3d.from_conv3d(conv) keeps the weights) and fine-tune")
    if isinstance(m, (nn.MaxPool3d, nn.AvgPool3d)):
        kt = _time_extent(m.kernel_size)
        if kt > 1:
            raise UnsupportedModelError(
                f"{type(m).__name__} {label!r} pools over {kt} frames, which needs future frames; "
                f"use a temporal kernel of 1 (pool over space only) for an online model")
    if isinstance(m, (nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d)):
        out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * 3
        if out[0] is not None:
            raise UnsupportedModelError(
                f"{type(m).__name__} {label!r} pools over the whole clip (output_size {m.output_size!r}), "
                f"so an online model cannot reproduce it frame by frame; pool over space only, e.g. "
                f"AdaptiveAvgPool3d((None, 1, 1)), and average per-frame outputs instead")


def _default_output(out):
    """Logits when the model returns a Hugging Face output, else the tensor (or first item)."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "pooler_output"):
        v = getattr(out, key, None)
        if isinstance(v, torch.Tensor):
            return v
    if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple"):
        return out[0]
    raise ShapeError(f"cannot take a tensor from the model output of type {type(out).__name__}; "
                     f"pass output=callable to to_online")


def _detect_layout(model: nn.Module) -> str:
    if isinstance(model, VideoClassifier):
        return "video"
    if any(isinstance(m, nn.Conv3d) for m in model.modules()):
        return "clip"
    return "frames"


class OnlineStream(nn.Module):
    """A causal video model that processes one frame per call (see :func:`to_online`).

    - ``step(frame)``: ``frame`` is ``(C, H, W)`` (one stream) or ``(B, C, H, W)`` (``B``
      independent streams); returns that frame's output (``(K,)`` or ``(B, K)`` for a classifier).
      Buffers live inside the stream, start at zero and are updated in place.
    - ``reset(stream=None)``: clear all buffers, or only row ``stream`` of each buffer.
    - ``forward(frame, *buffers) -> (output, *new_buffers)``: the pure functional form (no state
      kept), for export and for callers that manage buffers themselves; ``frame`` is
      ``(B, C, H, W)``; with no buffers given, zeros are used. ``buffer_shapes(frame_shape, batch)``
      lists the buffer shapes in order (``buffer_names`` gives the cell each belongs to):
      ``(B, C_i // shift_div, H_i, W_i)`` for a shifted block whose input is ``(C_i, H_i, W_i)``,
      ``(B, C_in, (kt-1)*dt, H_i, W_i)`` for a causal temporal convolution.
    """

    def __init__(self, model: nn.Module, layout: str, output: Callable, out_time_dim: int,
                 frame_shape: Optional[tuple]) -> None:
        super().__init__()
        self.model = model
        self.layout = layout
        self.output_fn = output
        self.out_time_dim = out_time_dim
        self.frame_shape = tuple(frame_shape) if frame_shape is not None else None
        self.cells: list[StreamCell] = []
        self.buffer_names: list[str] = []
        for name, m in self.model.named_modules():
            if isinstance(m, StreamCell):
                m.index = len(self.cells)
                m.cell_name = name
                self.cells.append(m)
                self.buffer_names.append(name)

    # -- the model call on one frame --------------------------------------------------------
    def _run(self, frames: torch.Tensor):
        if self.layout == "frames":
            out = self.output_fn(self.model(frames))
        elif self.layout == "clip":
            out = self.output_fn(self.model(frames.unsqueeze(2)))
            out = out.squeeze(self.out_time_dim)
        else:  # a VideoClassifier: the per-frame logits it averages over T offline
            out = self.model.frame_logits(frames)
        return out

    def _check_frame(self, frame: torch.Tensor) -> torch.Tensor:
        if not isinstance(frame, torch.Tensor):
            raise ShapeError(f"a frame must be a torch.Tensor of shape (C, H, W) or (B, C, H, W), "
                             f"got {type(frame).__name__}")
        if frame.dim() == 3:
            return frame.unsqueeze(0)
        if frame.dim() == 4:
            return frame
        raise ShapeError(f"a frame must have shape (C, H, W) or (B, C, H, W), got {tuple(frame.shape)}; "
                         f"feed clips frame by frame (clip[t] for t in range(T))")

    @torch.inference_mode()
    def step(self, frame: torch.Tensor) -> torch.Tensor:
        """Process one frame (``(C, H, W)``) or one frame of each of ``B`` streams (``(B, C, H, W)``)."""
        single = frame.dim() == 3
        frames = self._check_frame(frame)
        if self.frame_shape is None:
            self.frame_shape = tuple(frames.shape[1:])
        out = self._run(frames)
        return out[0] if single else out

    @torch.inference_mode()
    def reset(self, stream: Optional[int] = None) -> "OnlineStream":
        """Clear the buffers (all streams, or only stream index ``stream``); returns ``self``.

        Call it at a scene cut, when a new clip/file/camera starts, or after a long pause.
        """
        if stream is not None:
            n = self.num_streams
            if n is not None and not -n <= stream < n:
                raise ShapeError(f"stream index {stream} is out of range for {n} streams")
        for cell in self.cells:
            cell.reset_state(stream)
        return self

    @property
    def num_streams(self) -> Optional[int]:
        """How many streams the buffers hold (``None`` before the first step or after ``reset()``)."""
        for cell in self.cells:
            if cell.state is not None:
                return int(cell.state.shape[0])
        return None

    def state_buffers(self) -> list:
        """The current stream buffers (``None`` where not allocated yet), in ``buffer_names`` order."""
        return [c.state for c in self.cells]

    def buffer_bytes(self) -> int:
        """Bytes held by the stream buffers now."""
        return sum(c.state.numel() * c.state.element_size() for c in self.cells if c.state is not None)

    # -- functional form ---------------------------------------------------------------------
    def forward(self, frame: torch.Tensor, *buffers: torch.Tensor):
        """``(frame (B, C, H, W), *buffers) -> (output, *new_buffers)``; nothing is stored."""
        frames = self._check_frame(frame)
        if buffers and len(buffers) != len(self.cells):
            raise ShapeError(f"expected {len(self.cells)} buffers ({', '.join(self.buffer_names)}), "
                             f"got {len(buffers)}; build them with stream.init_buffers(batch)")
        io = BufferIO(buffers if buffers else [None] * len(self.cells))
        for cell in self.cells:
            cell.io = io
        try:
            out = self._run(frames)
        finally:
            for cell in self.cells:
                cell.io = None
        return (out, *io.outputs)

    def init_buffers(self, batch: int = 1, frame_shape: Optional[Sequence[int]] = None,
                     dtype: Optional[torch.dtype] = None, device=None) -> list:
        """Zero buffers for ``batch`` streams of frames shaped ``frame_shape`` ``(C, H, W)``."""
        frame_shape = tuple(frame_shape) if frame_shape is not None else self.frame_shape
        if frame_shape is None:
            raise ShapeError("the frame shape is unknown; pass frame_shape=(C, H, W) "
                             "(or to_online(model, frame_shape=...))")
        p = next(self.model.parameters(), None)
        dtype = dtype or (p.dtype if p is not None else torch.float32)
        device = device or (p.device if p is not None else "cpu")
        with torch.no_grad():
            probe = torch.zeros((batch, *frame_shape), dtype=dtype, device=device)
            _, *bufs = self.forward(probe)
        return [torch.zeros_like(b) for b in bufs]

    def buffer_shapes(self, frame_shape: Optional[Sequence[int]] = None, batch: int = 1) -> list:
        """Shapes of the functional buffers, in order (see the class docstring)."""
        return [tuple(b.shape) for b in self.init_buffers(batch, frame_shape)]

    def extra_repr(self) -> str:
        return f"layout={self.layout!r}, buffers={len(self.cells)}"


def _frame_shape(frame_shape: Optional[Sequence[int]]) -> Optional[tuple]:
    """``frame_shape`` as a tuple of three positive ints ``(C, H, W)``, or ``None``."""
    if frame_shape is None:
        return None
    try:
        shape = tuple(operator.index(d) for d in frame_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"frame_shape must be three positive ints (C, H, W), got {frame_shape!r}; "
                          f"pass e.g. frame_shape=(3, 224, 224)")
    return shape


def _time_dim(out_time_dim: Optional[int], layout: str) -> int:
    """The output time axis to squeeze: only the ``"clip"`` layout has one (default 1)."""
    if out_time_dim is None:
        return 1
    if layout != "clip":
        raise ConfigError(f"out_time_dim={out_time_dim} has no effect with layout {layout!r} (only 'clip' models "
                          f"return a time axis); leave it out, or pass layout='clip' for a 3D network")
    return out_time_dim


def to_online(model: nn.Module, *, layout: str = "auto",
              output: Union[str, Callable, None] = None, out_time_dim: Optional[int] = None,
              frame_shape: Optional[Sequence[int]] = None, share_weights: bool = True) -> OnlineStream:
    """Convert a causal video model into an :class:`OnlineStream` that takes one frame per call.

    ``model`` has TSM applied with ``direction="past"`` (``slimkit.apply(m, "tsm", direction="past")``)
    and/or :class:`CausalConv3d` temporal convolutions. ``layout`` says how the model takes a clip:

    - ``"frames"``: ``(N*T, C, H, W)`` (a TSM image backbone); each step feeds ``(B, C, H, W)``.
    - ``"clip"``: ``(N, C, T, H, W)`` (a 3D network); each step feeds ``(B, C, 1, H, W)`` and
      squeezes ``out_time_dim`` (default 1) of the output (per-frame outputs ``(N, T, K)`` -> ``(B, K)``);
      ``out_time_dim`` with another layout is refused (it would do nothing).
    - ``"video"``: a ``slimkit_video.VideoClassifier`` (clips ``(N, T, C, H, W)``); each step calls
      its :meth:`~slimkit_video.classifier.VideoClassifier.frame_logits` on ``(B, C, H, W)``, the
      per-frame path the classifier averages over ``T`` offline (``return_per_frame=True``).
    - ``"auto"``: ``"video"`` for a ``VideoClassifier``, ``"clip"`` when it has ``Conv3d`` layers,
      else ``"frames"``.

    ``output`` picks the tensor from the model's output: a callable, an attribute name, or
    ``None`` (``logits`` of a Hugging Face output, else the tensor). The result is in eval mode;
    with ``share_weights`` (default) it shares parameters and buffers with ``model``, otherwise it
    holds a copy. ``model`` itself is not modified.

    Refused with a clear error: ``direction="both"`` shifts, TSM temporal pooling, non-causal
    ``Conv3d`` (temporal kernel > 1 without left-only padding) and temporal pooling.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"to_online needs a torch nn.Module, got {type(model).__name__}")
    if layout not in LAYOUTS + ("auto",):
        raise ConfigError(f"layout must be 'auto', 'frames', 'clip' or 'video', got {layout!r}")
    for name, m in model.named_modules():
        _check_module(name, m)
    if layout == "auto":
        layout = _detect_layout(model)
    out_time_dim = _time_dim(out_time_dim, layout)
    frame_shape = _frame_shape(frame_shape)
    if output is None:
        output_fn = _default_output
    elif isinstance(output, str):
        key = output

        def output_fn(out):
            return out[key] if isinstance(out, dict) else getattr(out, key)
    elif callable(output):
        output_fn = output
    else:
        raise ConfigError(f"output must be None, an attribute name or a callable, got {type(output).__name__}")

    memo = {}
    if share_weights:
        memo.update({id(p): p for p in model.parameters()})
        memo.update({id(b): b for b in model.buffers()})
    net = copy.deepcopy(model, memo)
    _replace(net)
    stream = OnlineStream(net, layout, output_fn, out_time_dim, frame_shape)
    stream.eval()
    return stream


def _replace(root: nn.Module) -> None:
    """Swap every causal shift for a ShiftCell and every CausalConv3d for a CausalConvCell."""
    for name, child in list(root.named_children()):
        if isinstance(child, TemporalShift):
            _replace(child.net)
            setattr(root, name, ShiftCell(child.net, child.shift_div))
        elif isinstance(child, CausalConv3d):
            setattr(root, name, CausalConvCell(child))
        else:
            _replace(child)
