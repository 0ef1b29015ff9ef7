"""Temporal shift semantics (hand-checked), gradients and the equality of our shift with the reference."""
from __future__ import annotations

import pytest
import torch

import slimkit
from slimkit_video import temporal_shift
from slimkit_video.tsm import TemporalShift, reference_shift
from slimkit_video.tsm.shift import shift_inplace_


def _clip():
    # one clip, T=3 frames, C=4 channels, 1x1 pixels; value = 10*(t+1) + c
    return torch.tensor([[10. * (t + 1) + c for c in range(4)] for t in range(3)]).view(3, 4, 1, 1)


def test_shift_both_hand_checked():
    out = temporal_shift(_clip(), n_segment=3, shift_div=4, direction="both").view(3, 4)
    expected = torch.tensor([
        # ch0 <- t+1, ch1 <- t-1, ch2, ch3 unchanged
        [20., 0., 12., 13.],
        [30., 11., 22., 23.],
        [0., 21., 32., 33.],
    ])
    assert torch.equal(out, expected)


def test_shift_past_hand_checked_never_reads_future():
    x = _clip()
    out = temporal_shift(x, n_segment=3, shift_div=4, direction="past").view(3, 4)
    expected = torch.tensor([
        [0., 11., 12., 13.],
        [10., 21., 22., 23.],
        [20., 31., 32., 33.],
    ])
    assert torch.equal(out, expected)
    # causality: changing the last frame changes nothing at earlier frames
    y = x.clone()
    y[2] += 100
    assert torch.equal(temporal_shift(y, 3, 4, "past")[:2], temporal_shift(x, 3, 4, "past")[:2])


def test_shift_keeps_clips_apart_and_input_untouched():
    x = torch.randn(2 * 4, 16, 2, 2)
    x0 = x.clone()
    out = temporal_shift(x, n_segment=4)
    assert torch.equal(x, x0)
    # clip 1 does not see clip 0: first frame of clip 1, channels [fold, 2fold) are zero
    assert torch.all(out[4, 2:4] == 0) and torch.all(out[3, 0:2] == 0)
    # each clip shifted alone gives the same result
    assert torch.equal(out[:4], temporal_shift(x[:4], 4)) and torch.equal(out[4:], temporal_shift(x[4:], 4))


@pytest.mark.parametrize("direction", ["both", "past"])
@pytest.mark.parametrize("shape", [(16, 24, 3, 5), (6, 10, 2, 2), (4, 7), (16, 64, 10, 10)])  # last: >= SMALL_NUMEL
def test_equals_reference_forward_and_backward(direction, shape):
    n_segment = {4: 2, 16: 8, 6: 3}[shape[0]]
    x = torch.randn(*shape, requires_grad=True)
    g = torch.randn(*shape)
    ours = temporal_shift(x, n_segment, 4, direction)
    (gx_ours,) = torch.autograd.grad(ours, x, g)
    ref = reference_shift(x, n_segment, 4, direction)
    (gx_ref,) = torch.autograd.grad(ref, x, g)
    assert torch.equal(ours, ref) and torch.equal(gx_ours, gx_ref)


def test_channels_last_input():
    x = torch.randn(8, 16, 4, 4).to(memory_format=torch.channels_last)
    assert torch.equal(temporal_shift(x, 4), reference_shift(x.contiguous(), 4))


@pytest.mark.parametrize("direction", ["both", "past"])
def test_gradcheck(direction):
    x = torch.randn(2 * 3, 8, 2, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: temporal_shift(t, 3, 4, direction), (x,))
    m = TemporalShift(torch.nn.Conv2d(8, 4, 3, padding=1).double(), n_segment=3, shift_div=4, direction=direction)
    assert torch.autograd.gradcheck(m, (x,))


def test_shift_errors():
    with pytest.raises(slimkit.ShapeError, match="not divisible by n_segment=4"):
        temporal_shift(torch.randn(6, 8, 2, 2), 4)
    with pytest.raises(slimkit.ConfigError, match="direction"):
        temporal_shift(torch.randn(4, 8, 2, 2), 4, direction="future")


@pytest.mark.parametrize("direction", ["both", "past"])
@pytest.mark.parametrize("shape,n_segment", [((16, 24, 3, 5), 8), ((6, 10, 2, 2), 3), ((4, 7), 2), ((3, 16, 2, 2), 1)])
def test_inplace_shift_equals_copy_and_restores_exactly(direction, shape, n_segment):
    from slimkit_video.tsm.shift import shift_inplace_, unshift_inplace_

    x = torch.randn(*shape)
    x0 = x.clone()
    token = shift_inplace_(x, n_segment, 4, direction)
    assert torch.equal(x, temporal_shift(x0, n_segment, 4, direction))
    unshift_inplace_(x, token)
    assert torch.equal(x, x0)


@pytest.mark.parametrize("direction", ["both", "past"])
def test_inplace_module_forward_equal_and_backward_uses_the_copy(direction, monkeypatch):
    import slimkit_video.tsm.modules as modules

    calls = []
    monkeypatch.setattr(modules, "INPLACE_MIN_NUMEL", 0)  # small test tensors take the in-place path too
    monkeypatch.setattr(modules, "shift_inplace_", lambda *a: calls.append(1) or shift_inplace_(*a))
    conv = torch.nn.Conv2d(16, 8, 1)
    fast = TemporalShift(conv, n_segment=4, shift_div=4, direction=direction, inplace=True)
    plain = TemporalShift(conv, n_segment=4, shift_div=4, direction=direction, inplace=False)
    x = torch.randn(8, 16, 3, 3)
    x0 = x.clone()
    with torch.inference_mode():
        assert torch.equal(fast(x), plain(x)) and torch.equal(x, x0)
    with torch.no_grad():
        assert torch.equal(fast(x), plain(x)) and torch.equal(x, x0)
    assert len(calls) == 2
    # with autograd on, the in-place path is never taken: same output and gradients as the reference
    xg = x.clone().requires_grad_(True)
    g = torch.randn(8, 8, 3, 3)
    out = fast(xg)
    gx, gw = torch.autograd.grad(out, (xg, conv.weight), g)
    ref = conv(reference_shift(xg, 4, 4, direction))
    rx, rw = torch.autograd.grad(ref, (xg, conv.weight), g)
    assert torch.equal(out, ref) and torch.equal(gx, rx) and torch.equal(gw, rw)
    assert torch.equal(xg.detach(), x0) and len(calls) == 2
