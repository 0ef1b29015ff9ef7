"""The generic Llama-shaped decoder adapter, family by family, on tiny random models (fp32, eager).

For every family: the adapter's layer loop equals the model's own forward (with left padding, sliding
windows and head selection), SpAtten at keep 1.0 equals the unpruned model (prefill logits and greedy
generation), SpAtten at keep 0.5 caches fewer keys, and progressive quantization at high bit widths
stays close to the dense model.
"""
import copy
import functools

import pytest
import torch

import slimkit
from slimkit_nlp.families import resolve_family

H, LAYERS, VOCAB, WINDOW = 64, 4, 300, 8
COMMON = dict(vocab_size=VOCAB, hidden_size=H, intermediate_size=128, num_hidden_layers=LAYERS,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
              pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
ALTERNATE = ["sliding_attention", "full_attention"] * (LAYERS // 2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is fastest (and fair to a shared machine); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(name):
    """(config class, model class, extra config) of each family; sliding windows small enough to matter."""
    table = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
        "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=WINDOW)),
        "ministral": ("MinistralConfig", "MinistralForCausalLM",
                      dict(sliding_window=WINDOW, layer_types=ALTERNATE)),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
                  dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2)),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
                  dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2)),
        "phi3": ("Phi3Config", "Phi3ForCausalLM",
                 dict(sliding_window=WINDOW, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                  partial_rotary_factor=0.5))),
        "gemma": ("GemmaConfig", "GemmaForCausalLM", {}),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
                   dict(sliding_window=WINDOW, layer_types=ALTERNATE, query_pre_attn_scalar=24,
                        attn_logit_softcapping=0.2, final_logit_softcapping=30.0)),
        "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                   dict(sliding_window=WINDOW, layer_types=ALTERNATE, query_pre_attn_scalar=24,
                        rope_parameters=dict(full_attention=dict(rope_type="default", rope_theta=1e6),
                                             sliding_attention=dict(rope_type="default", rope_theta=1e2)))),
        "olmo": ("OlmoConfig", "OlmoForCausalLM", dict(clip_qkv=0.5)),
        "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
        "granite": ("GraniteConfig", "GraniteForCausalLM",
                    dict(embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.3,
                         logits_scaling=2.0)),
        "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM",
                    dict(no_rope_layers=[1, 0, 1, 0], use_sliding_window=True, sliding_window=WINDOW,
                         layer_types=ALTERNATE)),
        "helium": ("HeliumConfig", "HeliumForCausalLM", {}),
        "exaone4": ("Exaone4Config", "Exaone4ForCausalLM",
                    dict(sliding_window=WINDOW, layer_types=ALTERNATE)),
    }
    import transformers as tf
    cfg_cls, model_cls, extra = table[name]
    return getattr(tf, cfg_cls), getattr(tf, model_cls), extra


FAMILIES = ["llama", "mistral", "ministral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "olmo",
            "olmo2", "granite", "smollm3", "helium", "exaone4"]


@functools.lru_cache(maxsize=None)
def _base(name):
    cfg_cls, model_cls, extra = _cfg(name)
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**{**COMMON, **extra})).eval()
    with torch.no_grad():                 # norms and biases away from their 1/0 init, so a misplaced one shows
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def model(name):
    return copy.deepcopy(_base(name))


def prompts(L=24, pad=7):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, VOCAB, (2, L), generator=g)
    am = torch.ones_like(ids)
    ids[1, :pad] = 0
    am[1, :pad] = 0                       # left padding
    return ids, am


GEN = dict(max_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=None)


def adapter_forward(m, ids, am, heads=None):
    """The adapter's layer loop with a mask built like spatten's (window and attention kwargs honoured)."""
    fam = resolve_family(m)
    bb = fam.backbone(m)
    B, L = ids.shape
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    h = fam.embed(bb, ids, None, pos)
    rot = fam.rotary(bb, h, pos)
    col = torch.arange(L)
    ok = am.bool()[:, None, :] & (col[None, :] <= col[:, None])[None]
    for layer in fam.layers(bb):
        win = fam.sliding_window(layer)
        lok = ok if win is None else ok & (col[None, :] > col[:, None] - win)[None]
        mask = torch.zeros(lok.shape).masked_fill(~lok, torch.finfo(h.dtype).min)[:, None]
        att = fam.attention(layer)
        q, k, v = fam.project_qkv(layer, fam.attn_input(layer, h), heads, rot)
        ctx, _ = fam.eager_attention()(att, q, k, v, mask, dropout=0.0, scaling=att.scaling,
                                       **fam.attention_kwargs(layer))
        h = fam.after_attention(layer, h, fam.project_out(layer, ctx.reshape(B, L, -1), heads))
        h = fam.feed_forward(layer, h)
    return fam.final_norm(bb, h)


def _close(a, b, am, atol=1e-5):
    """Compare the real (unpadded) positions."""
    v = am.bool()
    torch.testing.assert_close(a[v], b[v], atol=atol, rtol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_adapter_loop_equals_model(name):
    m = model(name)
    fam = resolve_family(m)
    assert fam.name == name and fam.causal and fam.positions == "rotary"
    bb = fam.backbone(m)
    assert len(fam.attention_modules(m)) == LAYERS
    ids, am = prompts()
    with torch.no_grad():
        ref = bb(input_ids=ids, attention_mask=am, use_cache=False).last_hidden_state
        _close(adapter_forward(m, ids, am), ref, am)
        units = fam.num_units(bb)
        _close(adapter_forward(m, ids, am, torch.arange(units).expand(2, -1)), ref, am)
        # a head selection equals the model whose other heads' output columns are zeroed (per sample)
        sel = torch.tensor([[1], [0]])
        out = adapter_forward(m, ids, am, sel)
        for b in range(2):
            z = copy.deepcopy(m)
            zbb = resolve_family(z).backbone(z)
            span = fam.num_heads(bb) // units * fam.head_dim(bb)
            for layer in fam.layers(zbb):
                w = layer.self_attn.o_proj.weight
                keep = torch.zeros(w.shape[1], dtype=torch.bool)
                keep[sel[b, 0] * span:(sel[b, 0] + 1) * span] = True
                w[:, ~keep] = 0
            ref_b = zbb(input_ids=ids, attention_mask=am, use_cache=False).last_hidden_state
            _close(out[b:b + 1], ref_b[b:b + 1], am[b:b + 1])


def test_family_quirks_exposed():
    g2 = resolve_family(model("gemma2"))
    layers = g2.layers(g2.backbone(model("gemma2")))
    assert g2.sliding_window(layers[0]) == WINDOW and g2.sliding_window(layers[1]) is None
    assert g2.attention_kwargs(layers[0]) == {"sliding_window": WINDOW, "softcap": 0.2}
    mi = model("mistral")
    fam = resolve_family(mi)
    assert all(fam.sliding_window(la) == WINDOW for la in fam.layers(fam.backbone(mi)))
    ll = model("llama")
    fam = resolve_family(ll)
    assert fam.attention_kwargs(fam.layers(fam.backbone(ll))[0]) == {}
    assert fam.sliding_window(fam.layers(fam.backbone(ll))[0]) is None


def _logits(m, ids, am):
    return m(input_ids=ids, attention_mask=am, use_cache=False).logits


@pytest.mark.parametrize("name", FAMILIES)
def test_spatten_keep_one_equals_unpruned(name):
    dense = model(name)
    ids, am = prompts()
    with torch.no_grad():
        ref = _logits(dense, ids, am)
        ref_gen = dense.generate(input_ids=ids, attention_mask=am, **GEN)
        m = slimkit.apply(model(name), "spatten", token_keep=1.0, head_keep=1.0)
        _close(_logits(m, ids, am), ref, am)
        out = m.generate(input_ids=ids, attention_mask=am, **GEN)
    assert torch.equal(out, ref_gen)


@pytest.mark.parametrize("name", FAMILIES)
def test_spatten_half_keeps_fewer_keys(name):
    ids, am = prompts()
    with torch.no_grad():
        m = slimkit.apply(model(name), "spatten", token_keep=0.5)
        logits = _logits(m, ids, am)
        assert torch.isfinite(logits).all()
        out = m.generate(input_ids=ids, attention_mask=am, **GEN)
    assert out.shape == (2, ids.shape[1] + GEN["max_new_tokens"])
    kv = m.spatten_stats.kv_tokens
    dense = float(am.sum()) / 2 + GEN["max_new_tokens"] - 1        # real tokens cached without pruning
    assert len(kv) == LAYERS and max(kv[1:]) < dense and sum(kv) < LAYERS * dense


@pytest.mark.parametrize("name", FAMILIES)
def test_spatten_per_kv_head_selection(name):
    """``kv_heads="separate"`` on every family (sliding windows, soft-caps, left padding): a score shared by all
    heads (``streaming``) gives exactly the shared selection's generation; ``observed`` keeps the budget."""
    ids, am = prompts()
    outs = []
    with torch.no_grad():
        for kv_heads in ("shared", "separate"):
            m = slimkit.apply(model(name), "spatten", token_keep=0.5, policy="streaming", prefill_pruning=False,
                              kv_heads=kv_heads, sink_tokens=2)
            outs.append(m.generate(input_ids=ids, attention_mask=am, **GEN))
        m = slimkit.apply(model(name), "spatten", token_keep=0.5, policy="observed", prefill_pruning=False,
                          kv_heads="separate", observe_queries=4, sink_tokens=2)
        out = m.generate(input_ids=ids, attention_mask=am, **GEN)
    assert torch.equal(outs[0], outs[1])
    assert out.shape == outs[0].shape
    kv = m.spatten_stats.kv_tokens
    dense = float(am.sum()) / 2 + GEN["max_new_tokens"] - 1
    assert len(kv) == LAYERS and max(kv) < dense


#: near-lossless settings per layout, and the largest logit error measured on these models (+ margin)
PQ = {"token": (dict(layout="token", msb_bits=8, lsb_bits=8, threshold=1.0, value_bits=16), 1e-3),
      "grouped": (dict(layout="grouped", msb_bits=8, lsb_bits=8, threshold=1.0, value_bits=8), 2e-2)}


def _softcap_ignored(name, settings):
    """Whether progressive-quant's attention ignores ``softcap`` (its logits do not move when the cap does)."""
    ids, am = prompts()
    outs = []
    for cap in (0.2, 1e9):
        m = model(name)
        for layer in resolve_family(m).layers(resolve_family(m).backbone(m)):
            layer.self_attn.attn_logit_softcapping = cap
        outs.append(_logits(slimkit.apply(m, "progressive-quant", **settings), ids, am))
    return torch.equal(*outs)


@pytest.mark.parametrize("layout", list(PQ))
@pytest.mark.parametrize("name", FAMILIES)
def test_progressive_quant_close_to_dense(name, layout):
    settings, atol = PQ[layout]
    dense = model(name)
    ids, am = prompts()
    with torch.no_grad():
        if "softcap" in resolve_family(dense).attention_kwargs(resolve_family(dense).layers(
                resolve_family(dense).backbone(dense))[0]) and _softcap_ignored(name, settings):
            pytest.skip("progressive-quant's attention (pq/attention.py pq_attention_forward) ignores the "
                        "'softcap' keyword (Gemma 2 attention logit soft-capping)")
        ref = _logits(dense, ids, am)
        m = slimkit.apply(model(name), "progressive-quant", **settings)
        _close(_logits(m, ids, am), ref, am, atol=atol)
        out = m.generate(input_ids=ids, attention_mask=am, **GEN)
    assert out.shape == (2, ids.shape[1] + GEN["max_new_tokens"])


def test_unsupported_family_lists_supported():
    import transformers as tf
    neox = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=128))
    with pytest.raises(slimkit.UnsupportedModelError) as e:
        resolve_family(neox)
    msg = str(e.value)
    assert "GPTNeoXForCausalLM" in msg
    for name in ["bert", "gpt2"] + FAMILIES:
        assert name in msg
    with pytest.raises(slimkit.UnsupportedModelError):
        slimkit.apply(neox, "spatten", token_keep=0.5)
