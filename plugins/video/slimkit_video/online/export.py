"""ONNX export of an online stream: ``(frame, *buffers) -> (output, *new_buffers)``.

The graph is the stream's functional form: inputs ``frame`` ``(B, C, H, W)`` and ``buffer_0 ..
buffer_{n-1}``; outputs ``output`` and ``new_buffer_0 .. new_buffer_{n-1}``. A runtime keeps the
buffers itself: start with zeros (shapes from ``stream.buffer_shapes(frame_shape, batch)``, also
written to the model's metadata), feed each output buffer back as the next input, zero them to
reset. Needs the ``export`` extra (``pip install 'slimkit[export]'``: onnx, onnxruntime).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from slimkit.errors import ConfigError, MissingExtraError, ShapeError

from .convert import OnlineStream


def export_onnx(stream: OnlineStream, path: str | os.PathLike, frame_shape: Optional[Sequence[int]] = None,
                batch: int = 1, opset: int = 17, check: bool = True) -> Path:
    """Write ``stream`` as an ONNX model at ``path``; returns the path.

    ``frame_shape`` is ``(C, H, W)`` (default: the stream's, known after a step or given to
    ``to_online``); ``batch`` is the fixed number of streams. With ``check`` the file is
    validated by ``onnx.checker``. Metadata ``slimkit_buffers`` lists buffer names and shapes.
    """
    try:
        import onnx
    except ImportError:
        from slimkit.registry import install_command

        raise MissingExtraError(f"ONNX export needs onnx: {install_command('export')}") from None
    if not isinstance(stream, OnlineStream):
        raise ConfigError(f"export_onnx needs the stream from slimkit_video.to_online(model), "
                          f"got {type(stream).__name__}")
    frame_shape = tuple(frame_shape) if frame_shape is not None else stream.frame_shape
    if frame_shape is None or len(frame_shape) != 3:
        raise ShapeError(f"pass frame_shape=(C, H, W) to export_onnx, got {frame_shape!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = stream.training
    stream.eval()
    p = next(stream.parameters(), None)
    dtype = p.dtype if p is not None else torch.float32
    frame = torch.zeros((batch, *frame_shape), dtype=dtype)
    buffers = stream.init_buffers(batch, frame_shape, dtype=dtype)
    n = len(buffers)
    in_names = ["frame"] + [f"buffer_{i}" for i in range(n)]
    out_names = ["output"] + [f"new_buffer_{i}" for i in range(n)]
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about Python branches on shapes; shapes are fixed in the exported graph
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")  # strided slices stay as Slice ops
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")   # written aside, renamed when complete
        torch.onnx.export(stream, (frame, *buffers), str(partial), input_names=in_names,
                          output_names=out_names, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    stream.train(was_training)
    try:
        model = onnx.load(str(partial))
        meta = model.metadata_props.add()
        meta.key = "slimkit_buffers"
        meta.value = json.dumps([{"name": nm, "cell": cell, "shape": list(b.shape)}
                                 for nm, cell, b in zip(in_names[1:], stream.buffer_names, buffers)])
        onnx.save(model, str(partial))
        if check:
            onnx.checker.check_model(str(partial))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


