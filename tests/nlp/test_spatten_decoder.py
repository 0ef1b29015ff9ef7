"""SpAtten on decoders: generate() with cache eviction, original positions, left padding, keep 1.0 exactness."""
import math

import pytest
import torch

import slimkit
from slimkit_nlp.compat import cache_kwargs, output_cache


def tiny(kind, seed=0):
    import transformers as tf
    torch.manual_seed(seed)
    if kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=4, n_head=4, n_positions=128,
                            bos_token_id=1, eos_token_id=1, attn_implementation="eager")
        return tf.GPT2LMHeadModel(cfg).eval()
    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=1, pad_token_id=0, attn_implementation="eager")
    return tf.LlamaForCausalLM(cfg).eval()


def prompts():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, 64, (2, 30), generator=g)
    am = torch.ones_like(ids)
    ids[1, :9] = 0
    am[1, :9] = 0                                        # left padding
    return ids, am


GEN = dict(max_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=None)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_keep_one_generation_equals_unpruned(kind):
    ids, am = prompts()
    with torch.no_grad():
        ref = tiny(kind).generate(input_ids=ids, attention_mask=am, output_scores=True,
                                  return_dict_in_generate=True, **GEN)
        m = slimkit.apply(tiny(kind), "spatten", token_keep=1.0)
        out = m.generate(input_ids=ids, attention_mask=am, output_scores=True, return_dict_in_generate=True, **GEN)
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.scores, ref.scores):
        assert torch.equal(a, b)


def _record_positions(model, kind):
    """Positions that reach the learned position table (GPT-2) or the rotary embedding (Llama)."""
    seen = []
    bb = model.transformer if kind == "gpt2" else model.model
    mod = bb.wpe if kind == "gpt2" else bb.rotary_emb
    if kind == "gpt2":
        mod.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    else:
        mod.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True)
    return seen


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_generation_with_pruning_positions_and_batches(kind):
    ids, am = prompts()
    m = slimkit.apply(tiny(kind), "spatten", token_keep=0.5, generation_pruning=True)
    seen = _record_positions(m, kind)
    with torch.no_grad():
        out = m.generate(input_ids=ids, attention_mask=am, return_dict_in_generate=True, **GEN)
    cache = output_cache(out)
    real = am.sum(1)                                                # 30 and 21 real prompt tokens
    # decode steps: every new token gets its original absolute position (real tokens before it),
    # although the cache of the pruned layers holds far fewer tokens
    steps = [p for p in seen if p.shape[-1] == 1]
    firsts = []
    for p in steps:
        if not firsts or not torch.equal(p, firsts[-1]):
            firsts.append(p)
    for t, p in enumerate(firsts):
        assert p[:, 0].tolist() == (real + t).tolist()
    assert len(firsts) == GEN["max_new_tokens"] - 1
    total = ids.shape[1] + GEN["max_new_tokens"] - 1                 # tokens that went through the model
    assert cache.layers[3].keys.shape[2] < total / 2                # cache really evicted (last layer)
    assert cache.layers[0].keys.shape[2] == total                   # first layer never pruned
    st = m.spatten_stats
    assert st.kv_tokens[3] < st.kv_tokens[1] < st.kv_tokens[0]
    # batch of 2 with left padding == each prompt alone
    with torch.no_grad():
        for b in range(2):
            one = m.generate(input_ids=ids[b:b + 1, ids.shape[1] - int(real[b]):], **GEN)
            assert torch.equal(one[0, -GEN["max_new_tokens"]:], out.sequences[b, -GEN["max_new_tokens"]:])


def test_prefill_protects_last_and_first_token():
    ids, am = prompts()
    m = slimkit.apply(tiny("gpt2"), "spatten", token_keep=0.45)    # KV budget over 4 layers: the last keeps ~20%
    with torch.no_grad():
        o = m.transformer(input_ids=ids, attention_mask=am, use_cache=False)
    kept = o.kept_indices
    assert kept.shape[1] < ids.shape[1]
    assert (kept[:, -1] == ids.shape[1] - 1).all()                  # newest token kept, in the last slot
    assert kept[1][kept[1] >= 0].min() == 9 and kept[0][0] == 0     # first real token (sink) kept


def test_cache_filled_without_spatten_is_refused():
    from transformers import DynamicCache
    m = tiny("gpt2")
    ids, _ = prompts()
    cache = DynamicCache(config=m.config)
    with torch.no_grad():
        m(input_ids=ids[:, :5], **cache_kwargs(cache))
    slimkit.apply(m, "spatten", token_keep=0.5)
    with pytest.raises(slimkit.SlimkitError, match="empty cache"):
        m(input_ids=ids[:, 5:6], **cache_kwargs(cache), attention_mask=torch.ones(2, 6, dtype=torch.long))


@pytest.mark.parametrize("policy", ["h2o", "streaming", "random", "per_layer", "window", "spatten_window"])
def test_baseline_policies_generate(policy):
    ids, am = prompts()
    m = slimkit.apply(tiny("llama"), "spatten", token_keep=0.5, policy=policy, generation_pruning=True)
    with torch.no_grad():
        out = m.generate(input_ids=ids, attention_mask=am, **GEN)
    assert out.shape == (2, 30 + GEN["max_new_tokens"])
    assert m.spatten_stats.kv_tokens[-1] < m.spatten_stats.kv_tokens[0]


def test_protect_recent_keeps_the_newest_tokens():
    ids, am = prompts()
    m = slimkit.apply(tiny("llama"), "spatten", token_keep=0.7, protect_recent=5)
    with torch.no_grad():
        o = m.model(input_ids=ids, attention_mask=am, use_cache=False)
    L = ids.shape[1]
    assert o.kept_indices.shape[1] < L
    for b in range(2):
        assert set(range(L - 5, L)) <= set(o.kept_indices[b].tolist())


def test_beam_search_follows_the_cache_reordering():
    ids, am = prompts()
    gen = dict(GEN, num_beams=3, max_new_tokens=6)
    with torch.no_grad():
        ref = tiny("gpt2").generate(input_ids=ids, attention_mask=am, **gen)
        same = slimkit.apply(tiny("gpt2"), "spatten", token_keep=1.0).generate(input_ids=ids, attention_mask=am, **gen)
        pruned = slimkit.apply(tiny("gpt2"), "spatten", token_keep=0.5).generate(input_ids=ids, attention_mask=am,
                                                                                **gen)
    assert torch.equal(same, ref)
    assert pruned.shape == ref.shape


def _state_with_scores(n, heavy):
    from slimkit_nlp.spatten.state import PruneState

    st = PruneState(1, 2, 1, "cpu", 0)
    prot = torch.zeros(1, n, dtype=torch.bool)
    prot[0, 0] = True                                         # the first token (sink)
    st.extend(torch.ones(1, n, dtype=torch.bool), prot)
    st.score[0] = 0.01
    st.score[0, heavy] = 1.0                                  # heavy hitters by cumulative attention
    st.count[0] = 1.0
    return st


@pytest.mark.parametrize("where,wide", [("newest", True), ("heavy", False)])
def test_auto_recent_share_follows_where_the_attention_goes(where, wide):
    """recent_share='auto': attention of the newest queries on the newest tokens -> a wide window;
    on old tokens with high cumulative scores -> those tokens, a narrow window."""
    from slimkit_nlp.spatten.config import SpattenConfig
    from slimkit_nlp.spatten.window import measure_recent_share

    n, heavy = 40, [5, 9, 13, 17]
    st = _state_with_scores(n, heavy)
    probs = torch.zeros(1, 2, 8, n)
    if where == "newest":
        probs[..., n - 12:] = 1.0 / 12
    else:
        probs[..., heavy] = 0.2
        probs[..., n - 1] = 0.2
    share = measure_recent_share(st, SpattenConfig(policy="spatten"), probs, torch.arange(n)[None],
                                  torch.ones(1, n, dtype=torch.bool), torch.tensor([16]))
    if wide:
        assert float(share) == 1.0
    else:       # the widest window that still leaves room for the 4 heavy hitters (16 = 2 always kept + window + 4)
        room = 16 - 2
        assert float(share) < 1.0 and math.floor(room * float(share)) - 1 + 2 + len(heavy) <= 16, float(share)


def test_sinks_window_and_budget_in_generation():
    from slimkit_nlp.spatten.schedule import count_for
    from slimkit_nlp.spatten.window import RECENT_GRID

    ids, am = prompts()
    m = slimkit.apply(tiny("gpt2"), "spatten", token_keep=0.5, generation_pruning=True)
    with torch.no_grad():
        out = m.generate(input_ids=ids, attention_mask=am, return_dict_in_generate=True, **GEN)
    state = output_cache(out)._spatten_state
    rt = m.transformer._spatten_runtime
    total = am.sum(1) + GEN["max_new_tokens"] - 1
    for li, (cols, valid) in enumerate(state.slots):
        if rt.token_ratios[li] < 1.0:
            assert state.recent[li] is not None and all(float(s) in RECENT_GRID for s in state.recent[li])
            budget = count_for(rt.token_ratios[li], total)
            assert (valid.sum(1) <= budget).all()             # the window and the sinks fit in the budget
        for b in range(2):
            first = ids.shape[1] - int(am[b].sum())           # left padding
            assert set(range(first, first + 4)) <= set(cols[b][valid[b]].tolist())   # 4 attention sinks kept
