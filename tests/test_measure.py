"""The measurement core: Mult-Adds, parameters, latency protocol, peak memory."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.measure import count_macs, count_params, measure_latency, peak_memory, register_macs_counter, trimmed_mean


def test_conv_and_linear_macs_match_formulas():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    r = count_macs(m, torch.randn(2, 3, 4, 4))
    assert r.by_type == {"Conv2d": 2 * 8 * 16 * 27, "Linear": 2 * 128 * 10}
    assert r.total == 2 * 8 * 16 * 27 + 2 * 128 * 10
    assert r.params == count_params(m) == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("conv,shape,expected", [
    (nn.Conv1d(4, 6, 3, padding=1), (1, 4, 10), 6 * 10 * 4 * 3),
    (nn.Conv3d(4, 6, 3, padding=1, groups=2), (1, 4, 2, 5, 5), 6 * 2 * 25 * 2 * 27),
    (nn.Conv3d(4, 6, (3, 1, 1), stride=(2, 1, 1)), (1, 4, 5, 3, 3), 6 * 2 * 9 * 4 * 3),
])
def test_conv_macs(conv, shape, expected):
    assert count_macs(conv, torch.randn(shape)).total == expected


def test_attention_matmuls_are_counted():
    class Attn(nn.Module):
        def forward(self, q, k):
            a = (q @ k.transpose(-1, -2)).softmax(-1) @ k
            b = nn.functional.scaled_dot_product_attention(q, k, k)
            c = torch.einsum("bij,bjk->bik", q, k.transpose(1, 2))
            return a, b, c

    r = count_macs(Attn(), torch.randn(2, 5, 4), torch.randn(2, 6, 4))
    assert r.total == 2 * 5 * 6 * 4 * 2 + 2 * 5 * 6 * 8 + 2 * 5 * 6 * 4


def test_plugin_counter_replaces_inner_counting():
    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x)

    register_macs_counter(Mine, lambda m, inputs, out: 1000)
    try:
        r = count_macs(nn.Sequential(Mine(), nn.Linear(4, 2)), torch.randn(1, 4))
        assert r.total == 1000 + 8
    finally:
        from slimkit.measure import macs
        macs._CUSTOM.pop(Mine)


def test_latency_protocol_reports_spread():
    r = measure_latency(lambda: torch.randn(64, 64) @ torch.randn(64, 64), warmup=2, runs=7, threads=1)
    assert r.runs == 7 and r.warmup == 2 and r.threads == 1
    assert 0 < r.min_ms <= r.median_ms <= r.p95_ms
    assert trimmed_mean([1, 2, 3, 4, 100, 5, 6, 7, 8, 9], 0.1) == pytest.approx(5.5)


def test_peak_memory_tracks_live_tensors():
    def f():
        a = torch.empty(1000, 1000)  # 4 MB
        b = torch.empty(1000, 1000)  # 4 MB, both alive
        del a
        c = torch.empty(500, 1000)  # 2 MB while b alive
        return b.sum() + c.sum()

    _, mem = peak_memory(f)
    assert 8_000_000 <= mem.peak_tensor_bytes < 8_100_000


def test_interleaved_latency_times_every_candidate_each_round():
    from slimkit.measure import measure_latency_interleaved

    calls = []
    res = measure_latency_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                      warmup=1, runs=4, threads=1)
    assert calls == ["a", "b"] * 5
    assert res["a"].runs == res["b"].runs == 4 and res["a"].warmup == 1


def test_lazy_modules_count_no_uninitialised_params():
    m = nn.Sequential(nn.LazyLinear(4), nn.Linear(4, 2))
    assert count_params(m) == 4 * 2 + 2
