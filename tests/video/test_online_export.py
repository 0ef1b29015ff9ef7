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

    from slimkit_video.online.export import export_onnx
    from slimkit_video.online.ort import OnnxStream

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


def test_onnx_export_of_a_causal_conv3d_stream(tmp_path):
    from torch import nn

    from slimkit_video.online import CausalConv3d
    from slimkit_video.online.export import export_onnx
    from slimkit_video.online.ort import OnnxStream

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = CausalConv3d(3, 6, (3, 3, 3), padding=1)
            self.c2 = CausalConv3d(6, 6, (2, 1, 1))
            self.head = nn.Linear(6, 4)

        def forward(self, x):  # (N, C, T, H, W) -> (N, T, K)
            x = self.c2(torch.relu(self.c1(x)))
            return self.head(x.mean((3, 4)).transpose(1, 2))

    net = randomize(Net()).eval()
    stream = to_online(net)
    path = export_onnx(stream, tmp_path / "causal3d.onnx", frame_shape=(3, 12, 12))
    ort_stream = OnnxStream(path)
    assert ort_stream.shapes == [(1, 3, 2, 12, 12), (1, 6, 1, 12, 12)]
    clip = torch.randn(1, 3, 16, 12, 12)
    with torch.no_grad():
        offline = net(clip)[0]
    got = torch.stack([torch.from_numpy(ort_stream.step(clip[0, :, t].numpy()))[0] for t in range(16)])
    assert (got - offline).abs().max().item() <= 1e-4
