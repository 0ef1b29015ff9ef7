"""progressive-quant combined with spatten token pruning, in both orders."""
import copy

import pytest
import torch

import slimkit
from slimkit_nlp.compat import cache_kwargs
from slimkit_nlp.pq import PQCache, pq_stats

from .test_pq_attention import tiny

pytestmark = pytest.mark.skipif("spatten" not in slimkit.techniques(), reason="spatten is not registered")

PQ = dict(msb_bits=6, lsb_bits=4, threshold=0.2, layout="token", value_bits=8, criterion="max_prob", grid="msb")


def both(base, order, token_keep=0.5):
    m = copy.deepcopy(base)
    for name in order:
        m = (slimkit.apply(m, "progressive-quant", **PQ) if name == "pq"
             else slimkit.apply(m, "spatten", token_keep=token_keep, decoder_budget="pruned_layers"))   # 2-layer models: a 50% KV budget is infeasible
    return m


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_combination_in_both_orders(kind):
    base = tiny(kind)
    ids = torch.randint(3, 60, (2, 24))
    outs = []
    for order in (("spatten", "pq"), ("pq", "spatten")):
        m = both(base, order)
        assert m.config._attn_implementation == "slimkit_pq"
        with torch.no_grad():
            out = m(input_ids=ids)
        st = pq_stats(m)
        layers = m.spatten_stats.layers
        assert st.rows > 0 and 0 < st.recompute_rate <= 1
        # spatten really pruned (it read the probabilities the quantized attention returned)
        assert layers[-1].tokens_in < layers[0].tokens_in
        # and the quantized attention saw the pruned lengths: fewer rows than without pruning
        assert st.rows < 2 * 4 * 24 * 2
        outs.append(out.logits if hasattr(out, "logits") else out.last_hidden_state)
    assert torch.equal(outs[0], outs[1])


def test_spatten_keep_all_with_pq_equals_pq_alone():
    base = tiny("gpt2")
    ids = torch.randint(3, 60, (2, 16))
    alone = slimkit.apply(copy.deepcopy(base), "progressive-quant", **PQ)
    comb = both(base, ("spatten", "pq"), token_keep=1.0)
    with torch.no_grad():
        a, c = alone(ids).logits, comb(ids).logits
    assert torch.allclose(a, c, atol=1e-5)
    assert pq_stats(comb).rows == pq_stats(alone).rows


@pytest.mark.parametrize("order", [("spatten", "pq"), ("pq", "spatten")])
def test_generation_evicts_from_the_low_bit_cache(order):
    m = both(tiny("gpt2"), order, token_keep=0.5)
    ids = torch.randint(3, 60, (1, 20))
    cache = PQCache(m)
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, **cache_kwargs(cache))
    assert out.shape == (1, 28)
    lens = [layer.length for layer in cache.layers]
    assert lens[-1] < 27 and all(layer.k_msb.dtype == torch.uint8 for layer in cache.layers)
    st = pq_stats(m)
    assert st.cache_bytes == cache.nbytes() and st.rows > 0


def test_generation_with_spatten_value_pruning_reads_dequantized_values():
    m = slimkit.apply(tiny("gpt2"), "spatten", token_keep=0.5, value_keep=0.5, decoder_budget="pruned_layers")
    m = slimkit.apply(m, "progressive-quant", **PQ)
    ids = torch.randint(3, 60, (1, 12))
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 16) and pq_stats(m).cache_bytes is not None


def test_generation_evicts_from_the_grouped_cache():
    """The default (grouped) layout under spatten's token eviction: evicted tokens leave the cache and
    the kept ones are quantized again in new groups."""
    m = slimkit.apply(tiny("gpt2"), "spatten", token_keep=0.7)
    m = slimkit.apply(m, "progressive-quant", key_group=4, residual_length=2)
    ids = torch.randint(3, 60, (1, 20))
    cache = PQCache(m)
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, **cache_kwargs(cache))
    assert out.shape == (1, 28)
    lens = [layer.length for layer in cache.layers]
    assert lens[-1] < 27 and all(layer.layout == "grouped" for layer in cache.layers)
    assert pq_stats(m).cache_bytes == cache.nbytes()
