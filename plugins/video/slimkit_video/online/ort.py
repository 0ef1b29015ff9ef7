"""The online step in ONNX Runtime: ``slimkit stream --backend onnxruntime``.

The exported graph (:func:`slimkit_video.online.export.export_onnx`) is the stream's functional
form: inputs ``frame`` ``(B, C, H, W)`` float32 and ``buffer_0 .. buffer_{n-1}``; outputs
``output`` ``(B, K)`` (logits) and ``new_buffer_0 .. new_buffer_{n-1}``, each new buffer the
same shape as its input buffer. ONNX Runtime keeps no state, so the runner does:

- :class:`OrtStep`: an ``InferenceSession`` with a fixed number of intra-op threads;
  ``run(frame, buffers) -> (logits, new_buffers)`` (numpy arrays, no state).
- :class:`OrtStream`: the stateful drop-in for :class:`OnlineStream` in the live loop:
  ``step(frame)`` (``(C, H, W)`` or ``(B, C, H, W)`` torch tensor -> ``(K,)`` or ``(B, K)``
  torch tensor), ``reset(stream=None)``, ``buffer_bytes()``.
- :func:`check_onnx_matches`: refuses, with one sentence, an ONNX file whose inputs or outputs do
  not have the shapes that the PyTorch stream's functional form has at the model's frame size,
  or whose outputs differ from the model's on probe frames.
- :func:`use_onnxruntime`: the hook ``slimkit stream`` calls: an ``OnlineModel`` whose stream runs
  in ONNX Runtime (exporting the model, or loading a given ONNX file after checking it).

Needs the ``export`` extra (``pip install 'slimkit[export]'``: onnx, onnxruntime).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from slimkit.errors import ConfigError, MissingExtraError, ShapeError

OPTIMIZATIONS = ("disable", "basic", "extended", "all")
#: max |ONNX Runtime - PyTorch| on the probe frames above which an ONNX file is refused
PROBE_TOLERANCE = 1e-3


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError("running the step in ONNX Runtime needs onnxruntime: "
                                "pip install 'slimkit[export]'") from None
    return onnxruntime


def session_options(threads: int = 1, optimization: str = "all"):
    """ONNX Runtime options: ``threads`` intra-op threads, one inter-op thread, sequential execution,
    graph optimization level ``optimization`` (one of :data:`OPTIMIZATIONS`)."""
    ort = _onnxruntime()
    if optimization not in OPTIMIZATIONS:
        raise ConfigError(f"optimization must be one of {', '.join(OPTIMIZATIONS)}, got {optimization!r}")
    level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
             "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
             "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
             "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = level
    return opts


def make_session(path: str | os.PathLike, threads: int = 1, optimization: str = "all"):
    """An ONNX Runtime CPU session for the ONNX file at ``path``; a file that cannot be loaded is refused."""
    ort = _onnxruntime()
    if not Path(path).is_file():
        raise ConfigError(f"ONNX file {str(path)!r} does not exist; export one with "
                          f"slimkit_video.online.export.export_onnx(stream, path, frame_shape=(3, H, W))")
    try:
        return ort.InferenceSession(str(path), session_options(threads, optimization),
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception classes for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"ONNX Runtime cannot load {str(path)!r} ({first[:200]}); pass a file written by "
                          f"slimkit_video.online.export.export_onnx") from None


def _shape(dims) -> tuple:
    """An ONNX Runtime shape with symbolic dimensions as ``None``."""
    return tuple(d if isinstance(d, int) else None for d in dims)


@dataclasses.dataclass(frozen=True)
class StepSignature:
    """Shapes of a step's functional form: ``frame`` ``(B, C, H, W)``, ``output`` ``(B, K)``, buffers in order."""

    frame: tuple
    output: tuple
    buffers: tuple

    def describe(self) -> str:
        bufs = ", ".join(str(tuple(b)) for b in self.buffers) or "none"
        return f"frame {tuple(self.frame)}, output {tuple(self.output)}, {len(self.buffers)} buffers ({bufs})"


def session_signature(session) -> StepSignature:
    """The signature an ONNX Runtime session declares (inputs ``frame, buffer_*``; outputs ``output, new_buffer_*``)."""
    ins, outs = session.get_inputs(), session.get_outputs()
    frame = _shape(ins[0].shape) if ins else ()
    output = _shape(outs[0].shape) if outs else ()
    return StepSignature(frame, output, tuple(_shape(i.shape) for i in ins[1:]))


def stream_signature(stream, frame_shape: Sequence[int], batch: int = 1) -> StepSignature:
    """The signature of the PyTorch stream's functional form for frames ``frame_shape`` ``(C, H, W)``."""
    frame = torch.zeros((batch, *frame_shape))
    with torch.no_grad():
        out, *bufs = stream(frame)
    return StepSignature(tuple(frame.shape), tuple(out.shape), tuple(tuple(b.shape) for b in bufs))


def _same(declared: tuple, wanted: tuple) -> bool:
    return len(declared) == len(wanted) and all(d is None or d == w for d, w in zip(declared, wanted))


def _signature_problem(session, want: StepSignature) -> Optional[str]:
    """What in the session's inputs and outputs differs from ``want`` (``None`` when they match)."""
    ins, outs = session.get_inputs(), session.get_outputs()
    have = session_signature(session)
    if len(ins) != len(want.buffers) + 1 or len(outs) != len(want.buffers) + 1:
        return (f"it has {len(ins)} inputs and {len(outs)} outputs, the model's step needs "
                f"{len(want.buffers) + 1} of each (frame or output plus {len(want.buffers)} buffers)")
    if not _same(have.frame, want.frame):
        return f"its frame input is {have.frame}, the model takes {want.frame}"
    if not _same(have.output, want.output):
        return f"its output is {have.output}, the model gives {want.output}"
    for i, (h, w) in enumerate(zip(have.buffers, want.buffers)):
        if not _same(h, w):
            return f"its buffer {i} is {h}, the model's is {w}"
    for i, (o, w) in enumerate(zip(outs[1:], want.buffers)):
        if not _same(_shape(o.shape), w):
            return f"its new buffer {i} is {_shape(o.shape)}, the model's is {w}"
    return None


def _probe_difference(step: "OrtStep", stream, frame_shape: Sequence[int], frames: int = 2) -> float:
    """Max |ONNX Runtime - PyTorch| over ``frames`` seeded random frames, buffers fed back (both sides)."""
    gen = torch.Generator().manual_seed(0)
    bufs_t: list = []
    bufs_o = step.init_buffers()
    worst = 0.0
    with torch.no_grad():
        for _ in range(frames):
            frame = torch.randn((1, *frame_shape), generator=gen)
            out_t, *bufs_t = stream(frame, *bufs_t)
            out_o, bufs_o = step.run(frame.numpy(), bufs_o)
            worst = max(worst, float(np.abs(out_t.numpy() - out_o).max()))
    return worst


def check_onnx_matches(step: "OrtStep", stream, frame_shape: Sequence[int], probe_frames: int = 2) -> float:
    """Refuse an ONNX step that does not match the PyTorch ``stream`` at ``frame_shape`` ``(C, H, W)``.

    Checks the input and output shapes (frame, logits, every buffer), then runs ``probe_frames``
    random frames through both; returns the max absolute difference of the logits.
    """
    how = (f"export it from this model with slimkit_video.online.export.export_onnx(stream, path, "
           f"frame_shape={tuple(frame_shape)})")
    problem = _signature_problem(step.session, stream_signature(stream, frame_shape))
    if problem:
        raise ConfigError(f"ONNX file {step.path!r} does not match the model: {problem}; {how}")
    diff = _probe_difference(step, stream, frame_shape, probe_frames) if probe_frames else 0.0
    if not diff <= PROBE_TOLERANCE:
        raise ConfigError(f"ONNX file {step.path!r} does not match the model: its logits differ from the model's "
                          f"by {diff:.3g} (more than {PROBE_TOLERANCE:g}) on {probe_frames} probe frames, so it "
                          f"holds other weights; {how}")
    return diff


class OrtStep:
    """The exported step in ONNX Runtime: ``run(frame, buffers) -> (logits, new_buffers)``, no state.

    ``threads`` intra-op threads (fixed); ``optimization``: graph optimization level
    (:data:`OPTIMIZATIONS`, default ``"all"``). ``frame_shape`` is the ``(B, C, H, W)`` the graph
    takes; ``buffer_shapes`` lists the buffer shapes in input order.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1, optimization: str = "all") -> None:
        self.path = str(path)
        self.threads = int(threads)
        self.session = make_session(path, threads, optimization)
        ins = self.session.get_inputs()
        if not ins or len(ins) != len(self.session.get_outputs()):
            raise ConfigError(f"ONNX file {self.path!r} is not an online step (it needs inputs frame, buffer_* "
                              f"and as many outputs output, new_buffer_*); export one with "
                              f"slimkit_video.online.export.export_onnx")
        self.input_names = [i.name for i in ins]
        sig = session_signature(self.session)
        if any(d is None for s in (sig.frame, *sig.buffers) for d in s):
            raise ConfigError(f"ONNX file {self.path!r} has symbolic input dimensions ({sig.describe()}); "
                              f"export it with a fixed batch and frame size (export_onnx does)")
        self.frame_shape = sig.frame
        self.buffer_shapes = list(sig.buffers)

    def init_buffers(self) -> list:
        """Zero buffers (float32) of the graph's shapes: the state of a stream that just started."""
        return [np.zeros(s, np.float32) for s in self.buffer_shapes]

    def run(self, frame: np.ndarray, buffers: Sequence[np.ndarray]) -> tuple:
        """``frame`` float32 ``(B, C, H, W)`` and the current buffers -> ``(logits (B, K), new buffers)``."""
        if tuple(frame.shape) != tuple(self.frame_shape):
            raise ShapeError(f"the ONNX step takes frames of shape {tuple(self.frame_shape)}, got "
                             f"{tuple(frame.shape)}; resize frames to the exported size or export again")
        out, *new = self.session.run(None, dict(zip(self.input_names, (frame, *buffers))))
        return out, new


class OrtStream:
    """Stateful ONNX Runtime stream with the live-loop interface of :class:`OnlineStream`.

    ``step(frame)``: ``(C, H, W)`` or ``(B, C, H, W)`` float (torch tensor or numpy) ->
    logits ``(K,)`` or ``(B, K)`` float32 torch tensor; the buffers are fed back between calls.
    ``reset(stream=None)`` zeroes all buffers or row ``stream`` of each.
    """

    def __init__(self, step: OrtStep) -> None:
        self.ort_step = step
        self.buffers = step.init_buffers()

    @property
    def cells(self) -> list:
        """One entry per buffer (the live loop counts them)."""
        return list(range(len(self.buffers)))

    def step(self, frame) -> torch.Tensor:
        """Run one frame; see the class docstring for shapes."""
        x = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
        single = x.ndim == 3
        x = np.ascontiguousarray(x[None] if single else x, dtype=np.float32)
        out, self.buffers = self.ort_step.run(x, self.buffers)
        logits = torch.from_numpy(out)
        return logits[0] if single else logits

    def reset(self, stream: Optional[int] = None) -> "OrtStream":
        """Zero the buffers (all streams, or only row ``stream``); returns ``self``."""
        if stream is None:
            self.buffers = self.ort_step.init_buffers()
        else:
            for b in self.buffers:
                b[stream] = 0
        return self

    def buffer_bytes(self) -> int:
        """Bytes held by the stream buffers."""
        return int(sum(b.nbytes for b in self.buffers))


def export_model_step(stream, frame_shape: Sequence[int], path: str | os.PathLike) -> Path:
    """Export the PyTorch ``stream`` for frames ``frame_shape`` ``(C, H, W)``, batch 1, to ``path``."""
    from .export import export_onnx

    return export_onnx(stream, path, frame_shape=tuple(frame_shape), batch=1)


def use_onnxruntime(model, onnx_path: Optional[str | os.PathLike] = None, threads: int = 1,
                    optimization: str = "all"):
    """``model`` (a live ``OnlineModel``) with its step run by ONNX Runtime instead of PyTorch.

    Without ``onnx_path`` the model's stream is exported (frames ``(3, size, size)``, batch 1) to a
    temporary file; with it, that file is loaded and refused unless its inputs, outputs and
    logits on probe frames match the model (:func:`check_onnx_matches`). Returns a copy of
    ``model`` whose ``stream`` is an :class:`OrtStream` and whose name says ``onnxruntime``.
    """
    frame_shape = (3, int(model.size), int(model.size))
    torch_stream = model.stream
    if onnx_path is None:
        with tempfile.TemporaryDirectory(prefix="slimkit-ort-") as tmp:
            path = export_model_step(torch_stream, frame_shape, Path(tmp) / "step.onnx")
            step = OrtStep(path, threads, optimization)
        source = "exported"
    else:
        step = OrtStep(onnx_path, threads, optimization)
        source = str(onnx_path)
    check_onnx_matches(step, torch_stream, frame_shape)
    return dataclasses.replace(model, stream=OrtStream(step),
                               name=f"{model.name} [onnxruntime, {source}, {step.threads} thread(s)]")


BACKENDS = ("torch", "onnxruntime")


def apply_backend(model, backend: str = "torch", onnx_path: Optional[str | os.PathLike] = None, threads: int = 1):
    """The live model for ``slimkit stream --backend``: ``model`` itself for ``"torch"``, else
    :func:`use_onnxruntime` (``onnx_path``: a given ONNX file, checked against the model)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
    if backend == "torch":
        if onnx_path is not None:
            raise ConfigError("--onnx FILE runs in ONNX Runtime; add --backend onnxruntime or leave --onnx out")
        return model
    return use_onnxruntime(model, onnx_path, threads)


class OnnxStream:
    """Run an exported stream with onnxruntime, keeping the buffers: ``step(frame)``, ``reset()``.

    ``step`` takes a ``(C, H, W)`` or ``(B, C, H, W)`` array and returns numpy logits ``(B, K)``;
    ``threads`` intra-op threads (see :mod:`slimkit_video.online.ort` for the torch-facing stream).
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1, optimization: str = "all") -> None:
        self.session = make_session(path, threads, optimization)
        inputs = self.session.get_inputs()
        self.names = [i.name for i in inputs]
        self.shapes = [tuple(i.shape) for i in inputs[1:]]
        self.reset()

    def reset(self) -> None:
        import numpy as np
        self.buffers = [np.zeros(s, dtype=np.float32) for s in self.shapes]

    def step(self, frame):
        import numpy as np
        frame = np.asarray(frame, dtype=np.float32)
        if frame.ndim == 3:
            frame = frame[None]
        out, *self.buffers = self.session.run(None, dict(zip(self.names, [frame, *self.buffers])))
        return out
