"""LSRA building blocks: channel split, causal / centred convolution, padding, Mult-Adds."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimkit.errors import ShapeError
from slimkit.measure import count_macs
from slimkit_nlp.lsra.modules import LSRA, ConvBranch, DynamicConv, LightweightConv


def _lsra(causal=True, conv_type="lightweight"):
    return LSRA(d_model=32, attn_dim=16, heads=2, kernel_size=5, conv_type=conv_type, conv_heads=4,
                causal=causal).eval()


@pytest.mark.parametrize("conv_type", ["lightweight", "dynamic"])
def test_channel_split_and_concatenation(conv_type):
    m = _lsra(conv_type=conv_type)
    x = torch.randn(2, 9, 32)
    y = m(x)
    assert y.shape == (2, 9, 32)
    # attention half reads input channels [:16] and writes output channels [:16]; conv half the rest
    x_conv = x.clone()
    x_conv[..., 16:] += torch.randn(2, 9, 16)
    y_conv = m(x_conv)
    assert torch.equal(y[..., :16], y_conv[..., :16])
    assert not torch.allclose(y[..., 16:], y_conv[..., 16:])
    x_attn = x.clone()
    x_attn[..., :16] += torch.randn(2, 9, 16)
    y_attn = m(x_attn)
    assert torch.equal(y[..., 16:], y_attn[..., 16:])
    assert not torch.allclose(y[..., :16], y_attn[..., :16])
    assert torch.allclose(y[..., :16], m.attn(x[..., :16], is_causal=True), atol=1e-6)
    assert torch.allclose(y[..., 16:], m.conv(x[..., 16:]), atol=1e-6)
    with pytest.raises(ShapeError, match="expects 32 channels"):
        m(torch.randn(1, 3, 16))


@pytest.mark.parametrize("cls", [LightweightConv, DynamicConv])
def test_causal_conv_never_reads_the_future(cls):
    conv = cls(channels=8, kernel_size=7, heads=4, causal=True).eval()
    x = torch.randn(2, 12, 8)
    y = conv(x)
    for t in range(11):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn(2, 11 - t, 8) * 10
        assert torch.equal(conv(x2)[:, : t + 1], y[:, : t + 1])
    # and it does read the K-1 = 6 previous positions (but not the 7th)
    x3 = x.clone()
    x3[:, 3] += 5.0
    d = (conv(x3) - y).abs().amax(dim=(0, 2))
    assert (d[3:10] > 0).all() and (d[10:] == 0).all() and (d[:3] == 0).all()


@pytest.mark.parametrize("cls", [LightweightConv, DynamicConv])
def test_centred_conv_reads_k_over_2_each_side(cls):
    conv = cls(channels=8, kernel_size=5, heads=4, causal=False).eval()
    x = torch.randn(1, 12, 8)
    x2 = x.clone()
    x2[:, 6] += 5.0
    d = (conv(x2) - conv(x)).abs().amax(dim=(0, 2))
    assert (d[4:9] > 0).all() and (d[:4] == 0).all() and (d[9:] == 0).all()


def test_lightweight_kernel_is_softmaxed_and_shared_per_head_group():
    conv = LightweightConv(channels=8, kernel_size=3, heads=2, causal=True).eval()
    x = torch.randn(1, 6, 8)
    w = conv.weight.softmax(-1)  # [2, 3]
    xp = F.pad(x.transpose(1, 2), (2, 0))  # [1, 8, 8]
    ref = torch.stack([sum(w[c // 4, k] * xp[0, c, t + k] for k in range(3)) for c in range(8) for t in range(6)])
    assert torch.allclose(conv(x)[0].T.reshape(-1), ref, atol=1e-6)
    assert torch.allclose(conv.kernel().sum(-1), torch.ones(8, 1))


def test_padding_positions_are_zeroed_before_the_conv():
    branch = ConvBranch(channels=8, kernel_size=5, heads=4, causal=False).eval()
    x = torch.randn(1, 10, 8)
    mask = torch.ones(1, 10)
    mask[:, 7:] = 0
    y = branch(x, padding_mask=mask)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(1, 3, 8) * 100
    assert torch.allclose(branch(x2, padding_mask=mask)[:, :7], y[:, :7], atol=1e-6)


def test_conv_branch_macs_are_counted():
    import slimkit
    slimkit.techniques()  # load plugins so the registered counters are found
    B, T, C, K, H = 2, 10, 16, 7, 4
    for conv_type, conv_macs in (("lightweight", B * T * C * K), ("dynamic", B * T * C * H * K + B * T * C * K)):
        m = _lsra(conv_type=conv_type)
        m = LSRA(32, 16, 2, K, conv_type, H, causal=True).eval()
        r = count_macs(m, torch.randn(B, T, 32))
        name = "LightweightConv" if conv_type == "lightweight" else "DynamicConv"
        assert r.by_type[name] == conv_macs
        linear = B * T * (16 * 32 + 16 * 16) + B * T * 4 * 16 * 16  # conv in (GLU) + out, attention q/k/v/out
        assert r.by_type["Linear"] == linear
        assert r.total == linear + conv_macs + r.by_type.get("SelfAttention", 0)
        assert r.by_type["SelfAttention"] == B * T * T * 16 * 2  # QK^T and AV over 16 channels


def test_conv_buffer_in_a_plain_dynamic_cache_matches_full_causal_conv():
    from transformers import DynamicCache

    branch = ConvBranch(channels=8, kernel_size=4, heads=4, causal=True).eval()
    x = torch.randn(2, 9, 8)
    full = branch(x)
    cache = DynamicCache()  # no conv layers: the buffer (last K-1 = 3 inputs) is kept beside it
    steps = [branch(x[:, :2], cache=cache, layer_idx=1)] + [branch(x[:, t:t + 1], cache=cache, layer_idx=1)
                                                           for t in range(2, 9)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-6)
