"""progressive-quant low-bit KV cache: packed integer planes, selective LSB reads, generate()."""
import copy

import pytest
import torch
from transformers import DynamicCache

import slimkit
from slimkit import SlimkitError
from slimkit_nlp.compat import cache_kwargs
from slimkit_nlp.pq import PQCache, pq_stats
from slimkit_nlp.pq.quant import packed_width

from .test_pq_attention import V1, tiny


def test_cache_holds_packed_integer_planes_of_the_expected_size():
    m = slimkit.apply(tiny("llama"), "progressive-quant", **V1, msb_bits=6, lsb_bits=4, threshold=0.1)
    ids = torch.randint(3, 60, (2, 11))
    cache = PQCache(m)
    with torch.no_grad():
        m(ids, **cache_kwargs(cache), use_cache=True)
    b, hkv, t, d = 2, 2, 11, 8
    assert len(cache.layers) == 2 and cache.get_seq_length() == t
    layer = cache.layers[0]
    assert layer.k_msb.dtype == torch.uint8 and layer.k_msb.shape == (b, hkv, t, 6)   # 8 codes x 6 bits = 6 bytes
    assert layer.k_lsb.dtype == torch.uint8 and layer.k_lsb.shape == (b, hkv, t, 4)   # two 4-bit codes per byte
    assert layer.v_codes.dtype == torch.uint8 and layer.v_codes.shape == (b, hkv, t, 8)
    rows = b * hkv * t
    expected = rows * (packed_width(d, 6) + packed_width(d, 4) + packed_width(d, 8)) + rows * 4 * 2  # + 4 fp16 scalars
    assert layer.nbytes() == expected
    assert cache.nbytes() == 2 * expected
    assert cache.plain_bytes(torch.float32) == 2 * rows * 2 * d * 4
    # the planes really hold the one-shot 10-bit codes of the keys
    k = layer.keys
    assert k.shape == (b, hkv, t, d) and k.dtype == torch.float32


@pytest.mark.parametrize("criterion", ["max_prob", "expected_kl"])
def test_cached_prefill_equals_uncached_forward_and_lsb_reads_follow_the_threshold(criterion):
    base = tiny("gpt2")
    ids = torch.randint(3, 60, (2, 16))
    for thr in (0.0, 0.3, 1.0):
        m = slimkit.apply(copy.deepcopy(base), "progressive-quant", **{**V1, "criterion": criterion}, msb_bits=4,
                          lsb_bits=4, threshold=thr, kl_threshold=1e-6)
        with torch.no_grad():
            ref = m(ids).logits
            st_ref = copy.deepcopy(pq_stats(m))
            cache = PQCache(m)
            out = m(ids, **cache_kwargs(cache), use_cache=True).logits
        st = pq_stats(m)
        assert torch.allclose(out, ref, atol=1e-5), thr
        assert st.recomputed_rows == st_ref.recomputed_rows
        stored = sum(layer.k_lsb.numel() for layer in cache.layers)
        if thr == 0.0:
            assert st.lsb_bytes_read == 0
        elif thr == 1.0:
            assert st.lsb_bytes_read == stored
        else:
            assert 0 < st.lsb_bytes_read <= stored
        assert st.cache_bytes == cache.nbytes() < st.cache_bf16_bytes < st.cache_fp32_bytes


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_generate_uses_the_low_bit_cache(kind):
    m = slimkit.apply(tiny(kind), "progressive-quant", **V1, msb_bits=6, lsb_bits=4, threshold=0.1)
    ids = torch.randint(3, 60, (2, 8))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    with torch.no_grad():
        out = m.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 20)
    st = pq_stats(m)
    assert st.cache_bytes is not None and st.cache_bytes < st.cache_bf16_bytes < st.cache_fp32_bytes
    # prefill rows + one row per head per generated step, over all layers
    assert st.rows == 2 * 2 * 4 * (8 + 11)
    # the same generation with an explicit PQCache, and with a plain DynamicCache (inputs quantized on the fly)
    cache = PQCache(m)
    with torch.no_grad():
        again = m.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                           **cache_kwargs(cache))
    assert torch.equal(out, again) and cache.get_seq_length() == 19
    with torch.no_grad():
        plain = m.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                           **cache_kwargs(DynamicCache(config=m.config)))
    assert plain.shape == (2, 20) and pq_stats(m).cache_bytes is None


def test_threshold_one_generation_matches_full_precision_planes():
    """With threshold 1.0 every decode row reads the LSBs: same tokens as static 10-bit keys."""
    base = tiny("gpt2")
    ids = torch.randint(3, 60, (1, 10))
    a = slimkit.apply(copy.deepcopy(base), "progressive-quant", **V1, msb_bits=6, lsb_bits=4, threshold=1.0)
    s = slimkit.apply(copy.deepcopy(base), "progressive-quant", **V1, msb_bits=10, lsb_bits=0)
    with torch.no_grad():
        ga = a.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0, output_scores=True,
                        return_dict_in_generate=True)
        gs = s.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0, output_scores=True,
                        return_dict_in_generate=True)
    assert pq_stats(a).recompute_rate == 1.0
    assert torch.equal(ga.sequences, gs.sequences)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ga.scores, gs.scores))


def test_packed_states_refuse_other_attention():
    m = slimkit.apply(tiny("gpt2"), "progressive-quant", **V1)
    cache = PQCache(m)
    with torch.no_grad():
        m(torch.randint(3, 60, (1, 5)), **cache_kwargs(cache), use_cache=True)
    k, v = cache.layers[0].update(torch.randn(1, 4, 1, 8), torch.randn(1, 4, 1, 8))
    assert k.shape == (1, 4, 6, 8)
    with pytest.raises(SlimkitError, match="slimkit_pq"):
        k.sum()
    # values are read whole anyway: other readers get them dequantized
    assert torch.equal(v * 1.0, cache.layers[0].dequantized_values())
    # a cache built for a model without progressive-quant returns dequantized tensors instead
    plain = PQCache(tiny("gpt2"), **V1)
    with torch.no_grad():
        tiny("gpt2")(torch.randint(3, 60, (1, 5)), **cache_kwargs(plain), use_cache=True)
    assert plain.get_seq_length() == 5 and plain.layers[0].k_msb.dtype == torch.uint8


def test_deep_copies_keep_their_own_state():
    m = slimkit.apply(tiny("gpt2"), "progressive-quant", **V1, threshold=0.3)
    twin = copy.deepcopy(m)
    ids = torch.randint(3, 60, (1, 9))
    with torch.no_grad():
        twin.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert pq_stats(twin).rows > 0 and pq_stats(twin).cache_bytes is not None
    assert pq_stats(m).rows == 0  # the original was not run
    assert set(pq_stats(twin).rows_by_layer) == {0, 1}
