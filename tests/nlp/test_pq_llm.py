"""pq-llm benchmark pieces on a tiny random Llama (the real run needs SmolLM2 and the peer env)."""
import importlib.util

import pytest
import torch

from slimkit.errors import MissingExtraError, SlimkitError
from slimkit_nlp.benchmarks.llm_eval import (
    DenseMethod,
    Prompt,
    continuation_metrics,
    dense_reference,
    time_prefill_and_decode,
)
from slimkit_nlp.benchmarks.pq_llm import PQMethod, QuantizedCacheMethod, plot, prompt_count

from .test_pq_grouped import llama


def _prompt(t=40, c=8):
    torch.manual_seed(1)
    ids = torch.randint(3, 60, (1, t + c))
    return Prompt(ids[:, :t], ids[:, t:], "random")


def test_pq_method_runs_the_harness_and_reports_its_stats():
    model = llama()
    prompt = _prompt()
    ref = dense_reference(model, prompt)
    dense = continuation_metrics(DenseMethod(model), prompt, ref)
    assert dense["kl"] < 1e-6 and dense["top1"] == 1.0
    hi = PQMethod(model, dict(msb_bits=8, lsb_bits=8, value_bits=8, threshold=1.0, key_group=8, value_group=8),
                  name="pq hi")
    lo = PQMethod(model, dict(key_group=8, value_group=8, criterion="max_prob", threshold=0.5), name="pq lo",
                  pq_model=hi.model)  # one pq model shared, each method installs its config
    m_hi, m_lo = continuation_metrics(hi, prompt, ref), continuation_metrics(lo, prompt, ref)
    assert m_hi["kl"] < m_lo["kl"] and m_hi["kl"] < 1e-3
    st = lo.stats()
    assert set(st["recompute_rate_by_layer"]) == {0, 1} and 0 < st["recompute_rate"] <= 1
    assert st["key_bits_read"] == pytest.approx(2 + 2 * st["recompute_rate"])
    assert hi.stats()["recompute_rate"] == 1.0 and hi.stats()["key_bits_read"] == 16
    cache, _ = lo.prefill(prompt.ids)
    assert lo.kv_bytes(cache) == cache.nbytes() and lo.view_bytes == cache.view_bytes() > 0
    timing = time_prefill_and_decode([DenseMethod(model), lo], prompt, decode_tokens=3, repeats=1, warmup_tokens=1)
    assert timing["pq lo"]["decode_tok_s"] > 0 and timing["pq lo"]["kv_bytes"] > 0


def test_stored_pq_results_carry_the_counters_that_rebuild_the_stats(tmp_path, monkeypatch):
    """Each pq result carries the counters its prompt added; summing them (fresh or read back from the store of
    a resumed run) gives the stats of measuring straight through, and the store does not measure twice."""
    from slimkit_nlp.benchmarks.llm_eval import MeasurementStore
    from slimkit_nlp.benchmarks.pq_llm import _measured_continuation

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    model, prompt = llama(), _prompt()
    ref = dense_reference(model, prompt)
    opts = dict(key_group=8, value_group=8, criterion="max_prob", threshold=0.5)
    straight = PQMethod(model, opts, name="pq")
    for _ in range(2):
        continuation_metrics(straight, prompt, ref)
    want = straight.stats()
    assert set(want["recompute_rate_by_layer"]) == {0, 1} and want["recompute_rate"] > 0
    calls = []
    for run in range(2):                                              # a first run, then a resumed one
        m = PQMethod(model, opts, name="pq", pq_model=straight.model)
        store = MeasurementStore("toy-pq", {})
        for key in ("prompt a", "prompt b"):
            result = store.measure(key, lambda: calls.append(1) or _measured_continuation(m, prompt, ref))
            m.add_counters(result["pq_counters"])
        assert m.stats() == want
    assert len(calls) == 2


@pytest.mark.skipif(importlib.util.find_spec("optimum") is not None, reason="quanto is installed here")
def test_a_missing_quantized_backend_is_an_error_naming_the_fix():
    with pytest.raises(MissingExtraError) as e:
        QuantizedCacheMethod(llama(), "quanto", 4)
    assert "optimum-quanto" in str(e.value) and "slimkit bench pq-llm" in str(e.value)


@pytest.mark.skipif(importlib.util.find_spec("optimum") is None, reason="quanto is not installed here")
def test_quanto_method_runs():
    model = llama()
    prompt = _prompt(t=20, c=4)
    m = QuantizedCacheMethod(model, "quanto", 4)
    out = continuation_metrics(m, prompt, dense_reference(model, prompt))
    assert out["kv_bytes"] > 0


def test_prompt_count(monkeypatch):
    class Ctx:
        quick = False
    monkeypatch.delenv("SLIMKIT_BENCH_PROMPTS", raising=False)
    assert prompt_count(Ctx()) == 40
    Ctx.quick = True
    assert prompt_count(Ctx()) == 4
    monkeypatch.setenv("SLIMKIT_BENCH_PROMPTS", "7")
    assert prompt_count(Ctx()) == 7
    monkeypatch.setenv("SLIMKIT_BENCH_PROMPTS", "zero")
    with pytest.raises(SlimkitError, match="SLIMKIT_BENCH_PROMPTS"):
        prompt_count(Ctx())


def test_plot_writes_a_png(tmp_path):
    rows = [dict(name=n, kind=k, kl=kl, top1=0.9, kv_bytes=b, decode_tok_s=s)
            for n, k, kl, b, s in (("fp32", "dense", 0.0, 5e7, 20.0), ("quanto int4", "quantized", 0.02, 8e6, 16.0),
                                   ("pq", "pq", 0.005, 7.8e6, 19.0))]
    png = tmp_path / "pq-llm.png"
    plot({"rows": rows, "prompts": 4, "threads": 1}, png)
    assert png.stat().st_size > 1000


def test_pq_llm_is_registered():
    from slimkit.bench import benchmarks

    assert "pq-llm" in benchmarks()


def test_pq_store_keys_differ_per_config():
    m1, m2 = PQMethod(llama(), {"key_group": 8, "value_group": 8}, name="pq"), None
    m2 = PQMethod(llama(), {"key_group": 16, "value_group": 8}, name="pq", pq_model=m1.model)
    assert m1.store_key != m2.store_key and '"key_group": 8' in m1.store_key
