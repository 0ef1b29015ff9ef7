"""SpAtten with ``kv_heads="separate"``: each key/value head keeps its own tokens (as kvpress presses do).

Checked against independent computations on a tiny grouped-query Llama (4 query heads, 2 key/value heads):
the tokens each head keeps are the top of the attention its group received in the dense model's eager
attention maps, and the next token's logits equal the dense model's with each head's keys masked to its
kept set (the reference runs transformers' own forward through a registered attention function).
"""
import pytest
import torch

import slimkit
from slimkit.errors import ConfigError

VOCAB, L, LAYERS = 64, 40, 4


def tiny(seed=0, layers=LAYERS):
    import transformers as tf
    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=1, pad_token_id=0, attn_implementation="eager")
    model = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():                 # peaked, head-specific attention (a random model's is near uniform)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
    return model


def prompt(batch=1, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (batch, L), generator=g)


def _prefill(model, ids, **kw):
    from slimkit_nlp.compat import output_cache
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, **kw)
    return out, output_cache(out)


def _state(cache):
    from slimkit_nlp.spatten.state import STATE_ATTR
    return getattr(cache, STATE_ATTR)


def expected_kept(attn, keep):
    """Independent selection for the ``per_layer`` policy: per key/value head, the first token and the newest
    stay, the rest of ``ceil(keep * L)`` goes to the top of the attention received from the head's group
    (summed over queries, divided by the number of queries that see the key, averaged over the group)."""
    b, h, n, _ = attn.shape
    got = attn.sum(2) / torch.arange(n, 0, -1, dtype=attn.dtype)
    per_kv = got.view(b, 2, h // 2, n).mean(2)[0]                      # (Hkv, n)
    k = -(-int(keep * n * 1000) // 1000)
    kept = []
    for head in per_kv:
        s = head.clone()
        s[0], s[-1] = float("inf"), float("inf")
        kept.append(sorted(s.topk(k).indices.tolist()))
    return kept


def test_each_kv_head_keeps_the_top_of_its_groups_attention():
    model, ids = tiny(), prompt()
    with torch.no_grad():
        dense = model(input_ids=ids, output_attentions=True)
    pruned = slimkit.apply(tiny(), "spatten", token_keep=0.5, policy="per_layer", prefill_pruning=False,
                           kv_heads="separate")
    _, cache = _prefill(pruned, ids)
    st = _state(cache)
    differs = False
    for layer in range(LAYERS):
        cols, valid = st.slots[layer]
        assert cols.shape == (1, 2, L // 2) and bool(valid.all())
        assert cache.layers[layer].keys.shape[2] == L // 2
        want = expected_kept(dense.attentions[layer], 0.5)
        assert [c.tolist() for c in cols[0]] == want, f"layer {layer}"
        differs |= want[0] != want[1]
    assert differs, "the two key/value heads should keep different tokens on a random model"


class _PerHeadMask:
    """A transformers attention function: eager attention where the last query row of each head sees only
    the keys ``allowed[layer][kv_head]`` (and itself)."""

    def __init__(self, allowed, group):
        self.allowed, self.group = allowed, group

    def __call__(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        from transformers.models.llama.modeling_llama import eager_attention_forward
        n, low = key.shape[2], torch.finfo(query.dtype).min
        # transformers passes no mask to a registered function here: build the causal one
        mask = torch.full((n, n), low).triu(1).expand(1, query.shape[1], n, n).clone()
        for hk, cols in enumerate(self.allowed[module.layer_idx]):
            row = torch.full((n,), low)
            row[cols + [n - 1]] = 0.0
            mask[0, hk * self.group:(hk + 1) * self.group, -1] = row
        assert attention_mask is None, "the reference expects no mask from transformers"
        return eager_attention_forward(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kw)


@pytest.mark.parametrize("policy", ["per_layer", "window_group", "observed", "observed_values"])
def test_next_token_equals_dense_with_each_heads_keys_masked(policy):
    from transformers import AttentionInterface

    model, ids = tiny(), prompt()
    pruned = slimkit.apply(tiny(), "spatten", token_keep=0.5, policy=policy, prefill_pruning=False,
                           kv_heads="separate", observe_queries=8)
    _, cache = _prefill(pruned, ids)
    st = _state(cache)
    allowed = {layer: [c.tolist() for c in st.slots[layer][0][0]] for layer in range(LAYERS)}
    assert any(a != b for a, b in allowed.values()), "each key/value head should keep its own tokens"
    nxt = torch.tensor([[5]])
    with torch.no_grad():
        got = pruned(input_ids=nxt, cache=cache, use_cache=True,
                     attention_mask=torch.ones(1, L + 1, dtype=torch.long)).logits[0, -1]
    AttentionInterface.register("slimkit_test_per_head", _PerHeadMask(allowed, 2))
    model.config._attn_implementation = "slimkit_test_per_head"
    with torch.no_grad():
        ref = model(input_ids=torch.cat([ids, nxt], 1)).logits[0, -1]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_same_score_for_every_head_equals_shared_selection():
    """A policy without a per-head score (``streaming``) keeps the same tokens in every head, so the per-head
    machinery (slot maps, masks) must give what the shared one gives, in generation too."""
    ids = prompt(batch=2)
    am = torch.ones_like(ids)
    ids[1, :7], am[1, :7] = 0, 0                                         # left padding
    gen = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None, output_scores=True,
               return_dict_in_generate=True)
    outs = []
    for kv_heads in ("shared", "separate"):
        m = slimkit.apply(tiny(), "spatten", token_keep=0.5, policy="streaming", prefill_pruning=False,
                          kv_heads=kv_heads)
        with torch.no_grad():
            outs.append(m.generate(input_ids=ids, attention_mask=am, **gen))
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    for a, b in zip(outs[0].scores, outs[1].scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_budget_is_the_same_as_shared():
    ids = prompt()
    sizes = {}
    for kv_heads in ("shared", "separate"):
        m = slimkit.apply(tiny(), "spatten", token_keep=0.25, policy="window_group", prefill_pruning=False,
                          kv_heads=kv_heads, observe_queries=4)
        _, cache = _prefill(m, ids)
        sizes[kv_heads] = sum(lay.keys.numel() for lay in cache.layers)
    assert sizes["separate"] == sizes["shared"] <= 0.25 * L * LAYERS * 2 * 8 * 1.02 + 2 * 8 * LAYERS


@pytest.mark.parametrize("bad, fix", [
    (dict(prefill_pruning=True), "prefill_pruning=False"),
    (dict(prefill_pruning=False, head_keep=0.5), "head_keep=1.0"),
    (dict(prefill_pruning=False, generation_pruning=True), "generation_pruning=False"),
    (dict(prefill_pruning=False, kv_heads="each"), "one of 'separate' or 'shared'"),
])
def test_settings_that_cannot_work_per_head_are_refused(bad, fix):
    kw = dict(kv_heads="separate", token_keep=0.5) | bad
    with pytest.raises(ConfigError, match=fix.replace("(", r"\(").replace(")", r"\)")):
        slimkit.apply(tiny(), "spatten", **kw)


def test_observed_policy_scores_each_head_by_its_groups_attention_and_window():
    """``observed``: per key/value head, the average of two distributions: attention received from every
    prompt query (divided by the queries that could see the key) and the newest queries' window attention
    (max-pooled over 7 neighbours), each over the head's group of query heads; computed here with loops."""
    from slimkit_nlp.spatten.policies import ScoreInputs, get_policy
    from slimkit_nlp.spatten.state import PruneState

    g = torch.Generator().manual_seed(0)
    n, heads, kv, obs = 12, 4, 2, 3
    logits = torch.randn(1, heads, n, n, generator=g).masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
    probs = logits.softmax(-1)
    st = PruneState(1, 1, kv, "cpu", 0)
    st.extend(torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.bool))
    cols = torch.arange(n)[None]
    x = ScoreInputs(state=st, cols=cols, causal=True, layer=0, observed=probs[:, :, -obs:], group=2, probs=probs)
    got = get_policy("observed").score_heads(x, kv)[0]
    for h in range(kv):
        received = [sum(probs[0, q, i, j] for q in (2 * h, 2 * h + 1) for i in range(j, n)) / (2 * (n - j))
                    for j in range(n)]
        # the window: the newest queries' mean attention, max-pooled over neighbours happens per query head, before the group average
        pooled = []
        for j in range(n):
            lo, hi = max(0, j - 3), min(n, j + 4)
            pooled.append(sum(max(probs[0, q, n - obs:, k].mean() for k in range(lo, hi)) for q in (2 * h, 2 * h + 1)) / 2)
        r, w = torch.tensor(received), torch.tensor(pooled)
        want = 0.5 * (r / r.sum() + w / w.sum())
        torch.testing.assert_close(got[h], want.float(), atol=1e-6, rtol=1e-5)


def test_observed_values_weighs_the_observed_score_by_each_value_norm():
    """``observed_values``: per key/value head, ``observed``'s score times ``||v_j||`` of that head; shared over
    heads, ``observed``'s score times the mean norm over heads; without values, ``observed`` itself."""
    from slimkit_nlp.spatten.policies import ScoreInputs, get_policy
    from slimkit_nlp.spatten.state import PruneState

    g = torch.Generator().manual_seed(1)
    n, heads, kv = 10, 4, 2
    logits = torch.randn(1, heads, n, n, generator=g).masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
    probs = logits.softmax(-1)
    values = torch.randn(1, kv, n, 8, generator=g)
    st = PruneState(1, 1, kv, "cpu", 0)
    st.extend(torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.bool))
    cols = torch.arange(n)[None]
    args = dict(state=st, cols=cols, causal=True, layer=0, observed=probs[:, :, -3:], group=2, probs=probs)
    with_v, without = ScoreInputs(**args, values=values), ScoreInputs(**args)
    plain, weighted = get_policy("observed"), get_policy("observed_values")
    norms = torch.stack([torch.tensor([float(values[0, h, j].pow(2).sum().sqrt()) for j in range(n)])
                         for h in range(kv)])
    torch.testing.assert_close(weighted.score_heads(with_v, kv)[0], plain.score_heads(without, kv)[0] * norms)
    torch.testing.assert_close(weighted.score(with_v)[0], plain.score(without)[0] * norms.mean(0))
    torch.testing.assert_close(weighted.score_heads(without, kv), plain.score_heads(without, kv))
    assert not torch.allclose(weighted.score_heads(with_v, kv), plain.score_heads(without, kv))
