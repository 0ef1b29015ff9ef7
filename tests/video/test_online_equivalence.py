"""Online stepping == offline clip, for HF MobileNetV2 / ResNet, a custom model and causal Conv3d nets."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.errors import ShapeError, UnsupportedModelError
from slimkit_video.online import CausalConv3d, to_online

from ._online_nets import randomize, tiny_mobilenet, tiny_resnet

TOL = 1e-5


def _mobilenet():
    return tiny_mobilenet()


def _resnet(layer_type="basic"):
    return tiny_resnet(layer_type)


class Custom(nn.Module):
    """A small CNN whose middle convs get shifted through target_modules."""

    def __init__(self, k=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU())
        self.b3 = nn.Conv2d(24, 24, 3, padding=1)
        self.head = nn.Linear(24, k)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.b1(x)
        x = self.b2(x)
        x = x + torch.relu(self.b3(x))
        return self.head(x.mean((2, 3)))


def _randomize_bn(model):
    return randomize(model)


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _build(kind, T, place="blockres"):
    if kind == "mobilenet":
        m = slimkit.apply(_mobilenet(), "tsm", n_segment=T, direction="past", place=place)
    elif kind == "resnet":
        m = slimkit.apply(_resnet(), "tsm", n_segment=T, direction="past", place=place)
    elif kind == "resnet-bottleneck":
        m = slimkit.apply(_resnet("bottleneck"), "tsm", n_segment=T, direction="past", place=place)
    else:
        m = slimkit.apply(Custom(), "tsm", n_segment=T, direction="past", target_modules=["b1", "b2", "b3"])
    return _randomize_bn(m).eval()


@pytest.mark.parametrize("kind,T,place", [
    ("mobilenet", 1, "blockres"), ("mobilenet", 5, "blockres"), ("mobilenet", 8, "block"),
    ("resnet", 3, "blockres"), ("resnet", 7, "block"), ("resnet-bottleneck", 4, "blockres"),
    ("custom", 6, None),
])
def test_stepping_equals_offline_clip(kind, T, place):
    model = _build(kind, T, place or "blockres")
    clip = torch.randn(T, 3, 32, 32)
    with torch.no_grad():
        offline = _logits(model(clip))
    stream = to_online(model)
    assert len(stream.cells) == sum(1 for m in model.modules() if type(m).__name__ == "TemporalShift")
    online = torch.stack([stream.step(clip[t]) for t in range(T)])
    assert online.shape == offline.shape
    assert T == 1 or offline.std(0).mean() > 1e-3  # outputs depend on the frames (not a degenerate net)
    assert (online - offline).abs().max().item() <= TOL
    # the functional form gives the same, buffers threaded by the caller
    bufs = stream.init_buffers(1, (3, 32, 32))
    outs = []
    with torch.no_grad():
        for t in range(T):
            out, *bufs = stream(clip[t:t + 1], *bufs)
            outs.append(out[0])
    assert (torch.stack(outs) - offline).abs().max().item() <= TOL
    # in float64 the two agree to rounding: the fp32 gap above is only summation order
    model64 = model.double()
    with torch.no_grad():
        offline64 = _logits(model64(clip.double()))
    stream64 = to_online(model64)
    online64 = torch.stack([stream64.step(clip[t].double()) for t in range(T)])
    assert (online64 - offline64).abs().max().item() <= 1e-10


@pytest.mark.parametrize("backbone", ["mobilenet", "resnet-model"])
def test_video_classifier_per_frame_logits(backbone):
    from slimkit_video.classifier import VideoClassifier

    T = 6
    if backbone == "mobilenet":
        clf = VideoClassifier(tiny_mobilenet(), n_segment=T)               # backbone logits
    else:
        import transformers
        cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
        clf = VideoClassifier(transformers.ResNetModel(cfg), n_segment=T, num_classes=3)  # features + head
    clf = randomize(slimkit.apply(clf, "tsm", n_segment=T, direction="past")).eval()
    clips = torch.randn(2, T, 3, 32, 32)
    with torch.no_grad():
        logits, per_frame = clf(clips, return_per_frame=True)
    stream = to_online(clf)
    assert stream.layout == "video"
    online = torch.stack([stream.step(clips[:, t]) for t in range(T)], 1)
    assert (online - per_frame).abs().max().item() <= TOL
    assert (online.mean(1) - logits).abs().max().item() <= TOL


def test_online_is_not_per_frame_2d():
    """Sanity: the shift matters, so equality above is not trivial."""
    model = _build("mobilenet", 4)
    clip = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        offline = _logits(model(clip))
        per_frame = torch.stack([_logits(model(torch.cat([clip[t:t + 1]] * 4)))[0] for t in range(4)])
    assert (offline[1:] - per_frame[1:]).abs().max().item() > 1e-3


def test_reset_equals_fresh_stream_and_single_stream_reset():
    model = _build("resnet", 4)
    stream, fresh = to_online(model), to_online(model)
    a, b = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    for t in range(4):
        stream.step(a[t])
    stream.reset()
    assert stream.num_streams is None
    got = torch.stack([stream.step(b[t]) for t in range(4)])
    want = torch.stack([fresh.step(b[t]) for t in range(4)])
    assert torch.equal(got, want)
    # reset one stream of a batch: that stream restarts, the other keeps its past
    batch = to_online(model)
    for t in range(3):
        batch.step(torch.stack([a[t], b[t]]))
    batch.reset(1)
    ref0, ref1 = to_online(model), to_online(model)
    for t in range(3):
        ref0.step(a[t])
    x0, x1 = torch.randn(3, 32, 32), torch.randn(3, 32, 32)
    out = batch.step(torch.stack([x0, x1]))
    assert (out[0] - ref0.step(x0)).abs().max() <= TOL
    assert (out[1] - ref1.step(x1)).abs().max() <= TOL


def test_batch_of_streams_equals_separate_streams():
    model = _build("mobilenet", 5)
    B, T = 3, 5
    clips = torch.randn(B, T, 3, 32, 32)
    batch = to_online(model)
    together = torch.stack([batch.step(clips[:, t]) for t in range(T)], 1)
    assert batch.num_streams == B
    for i in range(B):
        s = to_online(model)
        alone = torch.stack([s.step(clips[i, t]) for t in range(T)])
        assert (together[i] - alone).abs().max().item() <= TOL
    with pytest.raises(ShapeError, match="reset"):
        batch.step(clips[:2, 0])


def test_buffers_match_the_shift_fold_and_stay_flat():
    model = _build("mobilenet", 8)
    stream = to_online(model, frame_shape=(3, 32, 32))
    shapes = stream.buffer_shapes()
    assert len(shapes) == len(stream.cells) == len(stream.buffer_names) > 0
    for shape, cell in zip(shapes, stream.cells):
        assert shape[0] == 1 and shape[1] >= 1
    for _ in range(3):
        stream.step(torch.randn(3, 32, 32))
    ptrs = [c.state.data_ptr() for c in stream.cells]
    nbytes = stream.buffer_bytes()
    for _ in range(5):
        stream.step(torch.randn(3, 32, 32))
    assert [c.state.data_ptr() for c in stream.cells] == ptrs  # updated in place, no reallocation
    assert stream.buffer_bytes() == nbytes == sum(4 * torch.Size(s).numel() for s in shapes)


def test_refuses_bidirectional_shift_with_how_to():
    model = slimkit.apply(_mobilenet(), "tsm", n_segment=4, direction="both")
    with pytest.raises(UnsupportedModelError, match="direction='past'") as e:
        to_online(model)
    assert "future" in str(e.value) or "next frame" in str(e.value)


def test_refuses_temporal_pool():
    model = slimkit.apply(_resnet(), "tsm", n_segment=4, direction="past", temporal_pool=True)
    with pytest.raises(UnsupportedModelError, match="temporal pool"):
        to_online(model)


def test_shares_weights_and_leaves_model_unchanged():
    model = _build("resnet", 4)
    stream = to_online(model)
    assert any(type(m).__name__ == "TemporalShift" for m in model.modules())
    p_model = dict(model.named_parameters())
    assert all(any(p is q for q in p_model.values()) for p in stream.parameters())


# -- causal temporal convolutions (MoViNet stream buffers) ---------------------------------------
class Causal3D(nn.Module):
    """Causal 3D net with per-frame outputs: (N, C, T, H, W) -> (N, T, K)."""

    def __init__(self, k=4):
        super().__init__()
        self.c1 = CausalConv3d(3, 8, (3, 3, 3), padding=1)
        self.bn = nn.BatchNorm3d(8)
        self.c2 = CausalConv3d(8, 8, (2, 1, 1))                       # temporal-only
        self.c3 = CausalConv3d(8, 12, (3, 3, 3), stride=(1, 2, 2), padding=1, dilation=(2, 1, 1))
        self.c4 = nn.Conv3d(12, 12, (1, 3, 3), padding=(0, 1, 1))    # spatial-only: no buffer
        self.head = nn.Linear(12, k)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        x = x + torch.relu(self.c2(x))
        x = torch.relu(self.c4(torch.relu(self.c3(x))))
        return self.head(x.mean((3, 4)).transpose(1, 2))


@pytest.mark.parametrize("T", [1, 2, 9])
def test_causal_conv3d_stream_equals_full_clip(T):
    model = _randomize_bn(Causal3D()).eval()
    clip = torch.randn(1, 3, T, 16, 16)
    with torch.no_grad():
        offline = model(clip)[0]                                         # (T, K)
    stream = to_online(model)
    assert stream.layout == "clip" and len(stream.cells) == 3
    online = torch.stack([stream.step(clip[0, :, t]) for t in range(T)])
    assert (online - offline).abs().max().item() <= TOL
    shapes = stream.buffer_shapes((3, 16, 16), batch=2)
    assert shapes == [(2, 3, 2, 16, 16), (2, 8, 1, 16, 16), (2, 8, 4, 16, 16)]


def test_causal_conv3d_is_causal_and_from_conv3d_keeps_weights():
    conv = nn.Conv3d(2, 3, (3, 3, 3), padding=1)
    causal = CausalConv3d.from_conv3d(conv)
    assert torch.equal(causal.weight, conv.weight) and causal.causal_pad == 2
    x = torch.randn(1, 2, 6, 8, 8)
    y = x.clone()
    y[:, :, 4:] += 1.0  # change the future only
    with torch.no_grad():
        assert torch.equal(causal(x)[:, :, :4], causal(y)[:, :, :4])
        assert causal(x).shape == (1, 3, 6, 8, 8)


def test_refuses_non_causal_conv3d():
    model = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1))
    with pytest.raises(UnsupportedModelError, match="CausalConv3d"):
        to_online(model)
    with pytest.raises(UnsupportedModelError, match="pool"):
        to_online(nn.Sequential(CausalConv3d(3, 4, 3, padding=1), nn.AdaptiveAvgPool3d(1)))
