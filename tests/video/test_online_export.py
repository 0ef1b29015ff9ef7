"""ONNX export of an online stream: onnxruntime matches PyTorch over 16 steps."""
from __future__ import annotations

import json

import pytest
import torch

import slimkit
from slimkit_video.online import to_online

from ._online_nets import randomize, tiny_mobilenet

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_onnx_stream_matches_pytorch_over_16_steps(tmp_path):
    import onnx
    from slimkit_video.online.export import OnnxStream, export_onnx

    model = randomize(slimkit.apply(tiny_mobilenet(), "tsm", n_segment=8, direction="past"))
    stream = to_online(model)
    path = export_onnx(stream, tmp_path / "stream.onnx", frame_shape=(3, 32, 32))
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    bufs = json.loads(meta["slimkit_buffers"])
    assert [tuple(b["shape"]) for b in bufs] == stream.buffer_shapes((3, 32, 32))

    ort_stream = OnnxStream(path)
    assert len(ort_stream.shapes) == len(stream.cells)
    frames = torch.randn(16, 3, 32, 32)
    worst = 0.0
    for t in range(16):
        a = stream.step(frames[t])
        b = torch.from_numpy(ort_stream.step(frames[t].numpy()))[0]
        worst = max(worst, (a - b).abs().max().item())
    assert worst <= 1e-4
    # the buffers matter: a reset ONNX stream differs from the running one on the same frame
    ort_stream.reset()
    fresh = torch.from_numpy(ort_stream.step(frames[15].numpy()))[0]
    assert (fresh - a).abs().max().item() > 1e-6
