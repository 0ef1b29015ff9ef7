"""progressive-quant attention: threshold semantics, equality with static quantization, encoders."""
import copy

import pytest
import torch
import torch.nn.functional as F

import slimkit
from slimkit_nlp.pq import pq_stats

# the version-1 layout and defaults (per-token rows, 8-bit values, the paper's max-probability test, MSB grid)
V1 = dict(layout="token", value_bits=8, criterion="max_prob", grid="msb")


def tiny(kind):
    import transformers as tf
    torch.manual_seed(0)
    if kind == "bert":
        return tf.BertModel(tf.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64, max_position_embeddings=64)).eval()
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=60, n_embd=32, n_layer=2, n_head=4,
                                                n_positions=64)).eval()
    return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                              max_position_embeddings=64)).eval()


def run(model, ids, mask=None):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    return out


def main_tensor(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _static_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Static fake quantization written out by hand: Q and K at 10 bits on the MSB-aligned
    6+4 grid, V at 8 bits, then eager attention."""
    from slimkit_nlp.pq import dequantize, quantize

    def fq(x, bits, align=0):
        return dequantize(*quantize(x, bits, align))

    q = fq(query, 10, 4) if query.shape[2] > 1 else query.float()
    k, v = fq(key, 10, 4), fq(value, 8)
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    s = q @ k.transpose(-1, -2) * (scaling or q.shape[-1] ** -0.5)
    if attention_mask is not None:
        s = s + attention_mask
    p = s.softmax(-1)
    return (p @ v).transpose(1, 2).contiguous(), p


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_threshold_one_recomputes_every_row_and_equals_static(kind):
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register("pq_test_static", _static_reference)
    AttentionMaskInterface.register("pq_test_static", eager_mask)
    base = tiny(kind)
    ids = torch.randint(3, 60, (2, 14))
    mask = torch.ones_like(ids)
    if kind == "bert":
        mask[1, -4:] = 0
    else:
        mask[1, :3] = 0
    # min..max grid: MSB+LSB everywhere is exactly one-shot static 10-bit quantization
    pq = slimkit.apply(copy.deepcopy(base), "progressive-quant", **{**V1, "grid": "minmax"}, msb_bits=6, lsb_bits=4,
                       threshold=1.0)
    static = slimkit.apply(copy.deepcopy(base), "progressive-quant", **V1, msb_bits=10, lsb_bits=0, threshold=0.0)
    a, s = run(pq, ids, mask), run(static, ids, mask)
    st = pq_stats(pq)
    assert st.rows == 2 * 2 * 4 * 14 and st.recomputed_rows == st.rows and st.recompute_rate == 1.0
    assert st.key_bits_per_element == 10
    assert torch.equal(main_tensor(a), main_tensor(s))
    for pa, ps in zip(a.attentions, s.attentions):
        assert pa is not None and torch.equal(pa, ps)
    assert pq_stats(static).recomputed_rows == 0 and pq_stats(static).key_bits_per_element == 10
    # MSB-aligned grid (default): equals static 10-bit quantization on that grid, written out by hand
    pq = slimkit.apply(copy.deepcopy(base), "progressive-quant", **V1, msb_bits=6, lsb_bits=4, threshold=1.0)
    ref = copy.deepcopy(base)
    ref.set_attn_implementation("pq_test_static")
    a, r = run(pq, ids, mask), run(ref, ids, mask)
    assert pq_stats(pq).recompute_rate == 1.0
    valid = mask.bool()
    assert torch.allclose(main_tensor(a)[valid], main_tensor(r)[valid], atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_threshold_zero_recomputes_nothing(kind):
    base = tiny(kind)
    ids = torch.randint(3, 60, (2, 12))
    m = slimkit.apply(copy.deepcopy(base), "progressive-quant", **V1, msb_bits=4, lsb_bits=4, threshold=0.0)
    hi = slimkit.apply(copy.deepcopy(base), "progressive-quant", **V1, msb_bits=4, lsb_bits=4, threshold=1.0)
    a, b = run(m, ids), run(hi, ids)
    st = pq_stats(m)
    assert st.rows > 0 and st.recomputed_rows == 0 and st.key_bits_per_element == 4
    assert not torch.equal(main_tensor(a), main_tensor(b))  # MSB-only really differs from MSB+LSB


def test_intermediate_threshold_recomputes_flat_rows_only():
    m = slimkit.apply(tiny("gpt2"), "progressive-quant", **V1, msb_bits=6, lsb_bits=4, threshold=0.3)
    ids = torch.randint(3, 60, (1, 20))
    out = run(m, ids)
    st = pq_stats(m)
    assert 0 < st.recompute_rate < 1
    # rows recomputed are exactly those whose largest probability is small (first rows see few keys)
    assert st.key_bits_per_element == pytest.approx(6 + 4 * st.recompute_rate)
    assert set(st.recompute_rate_by_layer) == {0, 1}
    assert out.attentions[0].shape == (1, 4, 20, 20)
    # stats are per forward: a second call starts from zero
    run(m, ids[:, :5])
    assert pq_stats(m).rows == 2 * 4 * 5


def test_minilm_real_text_stays_close(minilm_path):
    from transformers import AutoModel, BertTokenizerFast

    from slimkit_nlp.data import load_plays

    tok = BertTokenizerFast.from_pretrained(minilm_path)
    text = next(iter(load_plays("validation").values()))[5000:6500]
    enc = tok([text[:700], text[700:]], return_tensors="pt", padding=True, truncation=True, max_length=96)
    ref_model = AutoModel.from_pretrained(minilm_path).eval()
    with torch.no_grad():
        ref = ref_model(**enc).last_hidden_state
    m = slimkit.apply(AutoModel.from_pretrained(minilm_path).eval(), "progressive-quant", **V1,
                      msb_bits=6, lsb_bits=4, threshold=0.1)
    with torch.no_grad():
        out = m(**enc, output_attentions=True)
    valid = enc["attention_mask"].bool()
    cos = F.cosine_similarity(out.last_hidden_state[valid], ref[valid], dim=-1)
    assert cos.min() > 0.98
    st = pq_stats(m)
    assert st.rows == 6 * 12 * enc["input_ids"].numel() and 0 <= st.recompute_rate < 0.5
    assert len(out.attentions) == 6 and out.attentions[0].shape[1] == 12


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_expected_kl_criterion_keeps_the_threshold_extremes_and_selects_rows(kind):
    base = tiny(kind)
    ids = torch.randint(3, 60, (2, 12))
    opts = dict(msb_bits=4, lsb_bits=4, criterion="expected_kl")
    never = slimkit.apply(copy.deepcopy(base), "progressive-quant", **{**V1, **opts}, threshold=0.0, kl_threshold=0.0)
    always = slimkit.apply(copy.deepcopy(base), "progressive-quant", **{**V1, **opts}, threshold=1.0, kl_threshold=1e9)
    run(never, ids), run(always, ids)
    assert pq_stats(never).recomputed_rows == 0 and pq_stats(always).recompute_rate == 1.0
    rates = []
    for k in (0.0, 1e-4, 1e9):  # lower KL threshold -> more rows recomputed
        m = slimkit.apply(copy.deepcopy(base), "progressive-quant", **{**V1, **opts}, threshold=0.5, kl_threshold=k)
        run(m, ids)
        rates.append(pq_stats(m).recompute_rate)
    # kl_threshold 0 recomputes every row with any error: all but a causal model's first query,
    # which sees one key (probability 1 whatever the key)
    assert rates[0] == pytest.approx(11 / 12 if kind == "gpt2" else 1.0)
    assert rates[0] >= rates[1] >= rates[2] == 0.0


def test_expected_msb_kl_matches_the_measured_kl_and_ranks_rows():
    """The estimate (no LSB reads) is calibrated against the KL really caused by MSB-only keys and
    queries, and ranks rows: large queries over coarse keys carry the error, not flat rows."""
    from slimkit_nlp.pq.attention import expected_msb_kl
    from slimkit_nlp.pq.quant import dequantize_msb, quantize, split_planes

    g = torch.Generator().manual_seed(0)
    b, h, lq, t, d, msb, lsb = 2, 4, 64, 64, 32, 4, 4
    q = torch.randn(b, h, lq, d, generator=g) * torch.rand(b, h, lq, 1, generator=g) * 3  # mixed query norms
    k = torch.randn(b, h, t, d, generator=g) * (0.3 + torch.rand(b, h, t, 1, generator=g))
    s = d ** -0.5

    def msb_only(x):
        c, sc, z = quantize(x, msb + lsb, lsb)
        return dequantize_msb(split_planes(c, lsb)[0], lsb, sc, z), sc

    qm, qs = msb_only(q)
    km, ks = msb_only(k)
    p = (q @ k.transpose(-1, -2) * s).softmax(-1)
    pm = (qm @ km.transpose(-1, -2) * s).softmax(-1)
    kl = (p * (p.log() - pm.log())).sum(-1)
    est_keys = expected_msb_kl(pm, qm, ks, s, lsb)
    est = expected_msb_kl(pm, qm, ks, s, lsb, qs, km)
    assert (est >= est_keys).all()
    assert 0.5 < float(est.mean() / kl.mean()) < 2.0  # calibrated on average
    # ranking: the quarter of rows with the largest estimate carries well over a quarter of the KL
    top = est.flatten().topk(est.numel() // 4).indices
    assert float(kl.flatten()[top].sum() / kl.sum()) > 0.5
    assert torch.corrcoef(torch.stack([est.flatten(), kl.flatten()]))[0, 1] > 0.5
