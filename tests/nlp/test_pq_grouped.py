"""progressive-quant, grouped layout (config version 2): packing, fast vs reference attention, bytes,
fidelity at high bits, config checks and migration."""
import copy

import pytest
import torch

import slimkit
from slimkit import ConfigError
from slimkit_nlp.compat import cache_kwargs
from slimkit_nlp.pq import PQCache, ProgressiveQuantConfig, pq_stats
from slimkit_nlp.pq.attention import attend_grouped, attend_grouped_reference
from slimkit_nlp.pq.grouped import GroupedPQLayer
from slimkit_nlp.pq.quant import pack, pack_fast, unpack, unpack_fast

from .test_pq_attention import tiny


def llama(head_dim=16, layers=2):
    import transformers as tf
    torch.manual_seed(0)
    return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=60, hidden_size=4 * head_dim, num_hidden_layers=layers,
                                              num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                              max_position_embeddings=256)).eval()


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_fast_packing_round_trip_is_exact_and_matches_the_generic_packing(bits):
    for d in (64, 16, 8):
        codes = torch.randint(0, 2 ** bits, (3, 2, 7, d), dtype=torch.int32)
        packed = pack_fast(codes, bits)
        assert packed.dtype == torch.uint8 and packed.shape[-1] == d * bits // 8
        assert torch.equal(unpack_fast(packed, bits).int(), codes)
        # the same bytes as the generic bit-stream packing, so the slow reference can read them
        assert torch.equal(packed, pack(codes, bits))
        assert torch.equal(unpack(packed, bits, d), codes)


def _layer(cfg, t, b=2, hkv=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = GroupedPQLayer(cfg, return_handles=False)
    k = torch.randn(b, hkv, t, d, generator=g) * (1 + 4 * torch.rand(1, 1, 1, d, generator=g))  # channel outliers
    v = torch.randn(b, hkv, t, d, generator=g)
    # in pieces, like a prefill followed by decode steps
    layer.update(k[:, :, : t - 5], v[:, :, : t - 5])
    for i in range(t - 5, t):
        layer.update(k[:, :, i:i + 1], v[:, :, i:i + 1])
    return layer, k, v


def queries_and_mask(layer, lq: int, seed: int, padding: int):
    """Queries ``[2, 4, lq, 16]`` for a ``_layer`` cache, and its additive mask ``[2, 1, lq, T]``: causal over the
    newest ``lq`` tokens, the second sample left-padded by ``padding`` tokens."""
    q = torch.randn(2, 4, lq, 16, generator=torch.Generator().manual_seed(seed)) * 2
    t = layer.length
    mask = torch.zeros(2, 1, lq, t)
    mask[..., t - lq:] = torch.triu(torch.full((lq, lq), float("-inf")), 1)
    mask[1, :, :, :padding] = float("-inf")
    return q, mask


@pytest.mark.parametrize("opts", [
    dict(), dict(threshold=1.0), dict(threshold=0.0), dict(criterion="max_prob", threshold=0.3),
    dict(threshold=0.5, kl_threshold=1e-4), dict(msb_bits=4, lsb_bits=4, value_bits=8, residual_length=3),
    dict(msb_bits=2, lsb_bits=0, value_bits=2, value_group=4, value_rotation=False),
    dict(grid="msb", threshold=0.5, kl_threshold=0.0), dict(threshold=0.5, kl_threshold=0.05, residual_length=0),
    dict(keep_views=False), dict(keep_views=False, threshold=0.5, kl_threshold=1e-4, residual_length=0),
    dict(msb_bits=8, lsb_bits=8, value_bits=8, threshold=0.5, kl_threshold=1e-4),   # 16-bit joined key codes
])
@pytest.mark.parametrize("lq", [1, 6])
def test_fast_attention_equals_the_reference_on_the_same_packed_cache(opts, lq):
    cfg = ProgressiveQuantConfig(**{"key_group": 8, "value_group": 8, **opts})
    layer, _, _ = _layer(cfg, 45)
    q, mask = queries_and_mask(layer, lq, seed=1, padding=4)
    p, out, rec, read = attend_grouped(cfg, layer, q, mask, 0.25)
    p_ref, out_ref, rec_ref = attend_grouped_reference(cfg, layer, q, mask, 0.25)
    assert rec == rec_ref
    assert torch.allclose(p, p_ref, atol=1e-5) and torch.allclose(out, out_ref, atol=1e-5)
    if cfg.lsb_bits == 0 or cfg.threshold == 0.0:
        assert rec == 0 and read == 0
    if cfg.threshold == 1.0 and cfg.lsb_bits:
        assert rec == 2 * 4 * lq and read == layer.lsb_bytes()


def test_residual_window_and_groups():
    cfg = ProgressiveQuantConfig(key_group=8, value_group=8, residual_length=5)
    layer, k, v = _layer(cfg, 45)
    assert layer.length == 45
    assert layer.k_len == (45 - 5) // 8 * 8 == 40 and layer.v_len == 40
    assert layer.k_res.shape[2] == 5 and layer.v_res.shape[2] == 5
    # the window is stored in float16, exactly
    assert torch.equal(layer.reference_keys()[:, :, 40:], k[:, :, 40:].half().float())
    # quantized keys: per channel over groups of 8 tokens at 4 bits
    err = (layer.reference_keys()[:, :, :40] - k[:, :, :40]).abs()
    step = layer.k_scale.float().repeat_interleave(8, dim=2)
    assert (err <= step * 0.51 + 1e-3).all()


def test_cache_bytes_are_the_tensors_it_holds():
    m = slimkit.apply(llama(), "progressive-quant", key_group=8, value_group=8, residual_length=2)
    ids = torch.randint(3, 60, (2, 30))
    cache = PQCache(m)
    with torch.no_grad():
        m(ids, **cache_kwargs(cache), use_cache=True)
    layer = cache.layers[0]
    b, h, d = 2, 2, 16
    held = [layer.k_msb, layer.k_lsb, layer.k_scale, layer.k_zero, layer.v_codes, layer.v_scale, layer.v_zero,
            layer.k_res, layer.v_res]
    assert layer.nbytes() == sum(t.numel() * t.element_size() for t in held)
    tk = tv = 24  # (30 - 2) // 8 * 8 tokens quantized, keys and values alike
    expected = (b * h * tk * d * (2 + 2) // 8 + 2 * b * h * (tk // 8) * d * 2     # key planes + fp16 scale/zero
                + b * h * tv * d * 4 // 8 + 2 * b * h * tv * (d // 8) * 2          # value codes + fp16 scale/zero
                + b * h * (30 - tk) * d * 2 + b * h * (30 - tv) * d * 2)           # fp16 windows
    assert layer.nbytes() == expected
    assert cache.nbytes() == sum(la.nbytes() for la in cache.layers) == 2 * expected
    assert cache.nbytes() < cache.plain_bytes(torch.bfloat16)
    assert cache.view_bytes() > 0
    assert pq_stats(m).cache_bytes == cache.nbytes()


def test_cached_prefill_equals_the_uncached_forward():
    m = slimkit.apply(llama(), "progressive-quant", key_group=8, value_group=8, kl_threshold=1e-4,
                      exact_prefill=False)
    ids = torch.randint(3, 60, (2, 27))
    with torch.no_grad():
        ref = m(ids).logits
        rows = pq_stats(m).recomputed_rows
        out = m(ids, **cache_kwargs(PQCache(m)), use_cache=True).logits
    assert torch.allclose(out, ref, atol=1e-5) and pq_stats(m).recomputed_rows == rows


def test_exact_prefill_attends_to_the_float_states_and_caches_them_quantized():
    base = llama()
    m = slimkit.apply(copy.deepcopy(base), "progressive-quant", key_group=8, value_group=8)
    ids = torch.randint(3, 60, (1, 27))
    with torch.no_grad():
        dense = base(ids).logits
        cache = PQCache(m)
        out = m(ids, **cache_kwargs(cache), use_cache=True).logits
        quantized = m(ids).logits  # no cache: the attention reads the quantized states
        step = m(ids[:, :1], **cache_kwargs(cache), use_cache=True).logits  # the next call reads the cache
    assert torch.allclose(out, dense, atol=1e-4) and not torch.allclose(quantized, dense, atol=1e-4)
    assert cache.layers[0].k_len == (27 - 8) // 8 * 8 and step.shape == (1, 1, 60)


def _gen_logits(model, ids, steps=12):
    with torch.no_grad():
        g = model.generate(ids, max_new_tokens=steps, do_sample=False, pad_token_id=0, output_logits=True,
                           return_dict_in_generate=True)
    return torch.stack(g.logits, 1), g.sequences


def test_high_bit_settings_approach_dense_logits():
    base = llama(layers=2)
    ids = torch.randint(3, 60, (1, 40))
    dense_logits, _ = _gen_logits(base, ids)
    errs = []
    for opts in (dict(msb_bits=2, lsb_bits=2, value_bits=4), dict(msb_bits=4, lsb_bits=4, value_bits=8),
                 dict(msb_bits=8, lsb_bits=8, value_bits=8, threshold=1.0)):
        m = slimkit.apply(copy.deepcopy(base), "progressive-quant", key_group=8, value_group=8, exact_prefill=False,
                          **opts)
        logits, _ = _gen_logits(m, ids)
        errs.append(float((logits - dense_logits).abs().max()))
        st = pq_stats(m)
        assert st.cache_bytes is not None and st.cache_bytes < st.cache_fp32_bytes
    assert errs[0] > errs[1] > errs[2] and errs[2] < 5e-3, errs


def test_stats_report_key_bits_and_recompute_rate_per_layer():
    m = slimkit.apply(llama(), "progressive-quant", key_group=4, value_group=8, criterion="max_prob", threshold=0.3)
    with torch.no_grad():
        m.generate(torch.randint(3, 60, (1, 20)), max_new_tokens=6, do_sample=False, pad_token_id=0)
    st = pq_stats(m)
    assert set(st.recompute_rate_by_layer) == set(st.key_bits_by_layer) == {0, 1}
    for layer, rate in st.recompute_rate_by_layer.items():
        assert st.key_bits_by_layer[layer] == pytest.approx(2 + 2 * rate)
    assert 0 < st.recompute_rate <= 1 and 0 < st.lsb_bytes_read <= st.lsb_bytes_stored
    d = st.to_dict()
    assert "key_bits_by_layer" in d and "recompute_rate_by_layer" in d and "lsb_read_share" in d


def test_generate_with_beams_and_token_edits():
    m = slimkit.apply(llama(), "progressive-quant", key_group=4, value_group=8, residual_length=0)
    ids = torch.randint(3, 60, (2, 13))
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=5, do_sample=False, num_beams=2, pad_token_id=0)
    assert out.shape == (2, 18)
    cache = PQCache(m)
    with torch.no_grad():
        m(ids, **cache_kwargs(cache), use_cache=True)
    layer = cache.layers[0]
    keys = layer.dequantized_keys()
    layer.select_tokens(torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 12]))
    assert layer.length == 9 and layer.k_len == 8
    assert torch.allclose(layer.dequantized_keys()[:, :, 8], keys[:, :, 12].half().float())
    layer.crop(-3)
    assert layer.length == 6


@pytest.mark.parametrize("options,needle", [
    (dict(msb_bits=3), "msb_bits=3 does not divide 8"), (dict(lsb_bits=3), "lsb_bits=3"),
    (dict(value_bits=6), "value_bits=6"), (dict(key_group=0), "key_group"), (dict(value_group=-1), "value_group"),
    (dict(residual_length=-2), "residual_length"), (dict(layout="rows"), "layout"),
])
def test_bad_grouped_configs_raise_one_clear_error(options, needle):
    with pytest.raises(ConfigError) as e:
        slimkit.make_config("progressive-quant", **options)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    if "bits" in needle:
        assert "use e.g." in msg and "layout='token'" in msg


def test_group_sizes_must_divide_head_dim():
    with pytest.raises(ConfigError) as e:
        slimkit.apply(llama(head_dim=16), "progressive-quant", value_group=12)
    msg = str(e.value)
    assert "value_group=12" in msg and "head_dim=16" in msg and "use e.g. value_group=" in msg
    with pytest.raises(ConfigError, match="value_rotation needs a power-of-two head_dim.*head_dim=12"):
        slimkit.apply(llama(head_dim=12), "progressive-quant", value_group=0)
    slimkit.apply(llama(head_dim=12), "progressive-quant", value_group=0, value_rotation=False)


def test_any_head_dim_packs_along_tokens():
    """Codes are packed along the token axis, so 1-bit values fit a head_dim of 12 (not a multiple of 8)."""
    m = slimkit.apply(llama(head_dim=12), "progressive-quant", value_group=0, value_rotation=False, value_bits=1,
                      msb_bits=1, lsb_bits=1, key_group=8, residual_length=2)
    cache = PQCache(m)
    with torch.no_grad():
        m(torch.randint(0, 50, (1, 30)), **cache_kwargs(cache), use_cache=True)
    layer = cache.layers[0]
    assert layer.k_len == 24 and layer.v_codes.shape[-2:] == (3, 12)        # 24 tokens / 8 per byte, 12 channels
    keys = layer.reference_keys()
    assert keys.shape[2] == 30 and torch.isfinite(keys).all()
    # sizes of at least head_dim mean whole heads; odd widths are fine on the token layout
    slimkit.apply(llama(head_dim=16), "progressive-quant", value_group=64)
    slimkit.apply(tiny("gpt2"), "progressive-quant", layout="token", msb_bits=3, lsb_bits=3, value_bits=6)


def test_version_1_configs_load_with_their_old_meaning():
    old = {"type": "progressive-quant", "version": 1, "msb_bits": 4, "lsb_bits": 4, "threshold": 0.2}
    cfg = slimkit.load_config(old)
    assert cfg.layout == "token" and cfg.value_bits == 8 and cfg.criterion == "max_prob"
    assert (cfg.msb_bits, cfg.lsb_bits, cfg.threshold, cfg.kl_threshold) == (4, 4, 0.2, 1e-3)
    full_v1 = {"type": "progressive-quant", "version": 1, "msb_bits": 6, "lsb_bits": 4, "threshold": 0.1,
               "value_bits": 6, "criterion": "expected_kl", "kl_threshold": 0.01, "grid": "minmax",
               "quantize_queries": False, "cache": True}
    cfg = slimkit.load_config(full_v1)
    assert cfg.layout == "token" and cfg.value_bits == 6 and cfg.grid == "minmax" and not cfg.quantize_queries
    new = slimkit.make_config("progressive-quant")
    assert new.to_dict()["version"] == 2 and slimkit.load_config(new.to_dict()) == new
    assert new.layout == "grouped"
