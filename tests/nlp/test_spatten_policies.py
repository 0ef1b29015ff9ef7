"""SpAtten on decoders: pruning policies as registered classes, token_keep as the KV budget, prefill_pruning."""
import pytest
import torch

import slimkit
from slimkit_nlp.compat import output_cache
from slimkit_nlp.spatten import (
    SpattenConfig,
    TokenPolicy,
    get_policy,
    kv_budget_schedule,
    policy_names,
    register_policy,
)
from slimkit_nlp.spatten.policies import _POLICIES


def tiny_llama(layers=8, seed=0):
    import transformers as tf
    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=1, pad_token_id=0, attn_implementation="eager")
    return tf.LlamaForCausalLM(cfg).eval()


def prompt(n=80, seed=3):
    return torch.randint(2, 64, (1, n), generator=torch.Generator().manual_seed(seed))


def kv_share(cache, n_prompt):
    return sum(lay.keys.shape[2] for lay in cache.layers) / (len(cache.layers) * n_prompt)


@pytest.mark.parametrize("budget", [0.25, 0.5, 0.8])
@pytest.mark.parametrize("start", [0.0, 0.15, 0.5])
def test_kv_budget_schedule_means_the_budget_over_all_layers(budget, start):
    r = kv_budget_schedule(30, budget, start, slope=0.25)
    assert len(r) == 30 and r[0] == 1.0
    assert abs(sum(r) / 30 - budget) < 1e-9
    assert all(a >= b - 1e-12 for a, b in zip(r, r[1:]))            # cascade: non-increasing
    assert all(0.0 < x <= 1.0 for x in r)


def test_kv_budget_below_one_layer_is_refused():
    with pytest.raises(slimkit.ConfigError, match=r"token_keep=0.2 cannot be met on a 4-layer decoder.*> 0.25"):
        kv_budget_schedule(4, 0.2, 0.15)


@pytest.mark.parametrize("policy", ["spatten", "window", "spatten_window", "streaming"])
@pytest.mark.parametrize("budget", [0.25, 0.5])
def test_token_keep_is_the_kv_share_after_prefill(policy, budget):
    ids = prompt(120)
    m = slimkit.apply(tiny_llama(), "spatten", token_keep=budget, policy=policy, observe_queries=4)
    with torch.no_grad():
        out = m(input_ids=ids, use_cache=True)
    share = kv_share(output_cache(out), ids.shape[1])
    assert share <= budget + 0.02 and share >= budget - 0.05, share


def test_budget_that_cannot_hold_the_sinks_names_both_numbers():
    m = slimkit.apply(tiny_llama(), "spatten", token_keep=0.2, sink_tokens=4, protect_recent=8)
    with pytest.raises(slimkit.ConfigError, match=r"leaves \d+ of this 40-token prompt.*fewer than the 12 "
                                                  r"that always stay \(4 sink tokens \+ 8 newest\)"):
        with torch.no_grad():
            m(input_ids=prompt(40), use_cache=True)


def test_unknown_policy_lists_the_registered_ones():
    with pytest.raises(slimkit.ConfigError, match=r"unknown spatten policy 'snapkv'.*'spatten', 'window'"):
        slimkit.apply(tiny_llama(), "spatten", policy="snapkv")


def test_a_user_policy_decides_what_is_kept():
    class Oldest(TokenPolicy):
        name = "oldest_test"

        def score(self, x):
            return -x.cols.float()

    register_policy(Oldest())
    try:
        assert "oldest_test" in policy_names() and get_policy("oldest_test").name == "oldest_test"
        ids = prompt(80)
        m = slimkit.apply(tiny_llama(), "spatten", token_keep=0.5, policy="oldest_test", prefill_pruning=False)
        with torch.no_grad():
            cache = output_cache(m(input_ids=ids, use_cache=True))
        cols, valid = cache._spatten_state.slots[-1]
        kept = cols[0][valid[0]].tolist()
        k = len(kept)
        assert kept == list(range(k - 1)) + [79]                       # the oldest, and the newest (always kept)
        with pytest.raises(ValueError, match="already registered"):
            register_policy(Oldest())
    finally:
        _POLICIES.pop("oldest_test", None)


def test_policy_returning_the_wrong_shape_is_named():
    class Bad(TokenPolicy):
        name = "bad_shape_test"

        def score(self, x):
            return x.cols.float()[:, :3]

    register_policy(Bad())
    try:
        m = slimkit.apply(tiny_llama(), "spatten", token_keep=0.5, policy="bad_shape_test")
        with pytest.raises(slimkit.SlimkitError, match="policy 'bad_shape_test' returned scores of shape"):
            with torch.no_grad():
                m(input_ids=prompt(60), use_cache=True)
    finally:
        _POLICIES.pop("bad_shape_test", None)


@pytest.mark.parametrize("policy", ["spatten", "window"])
def test_without_prefill_pruning_the_prompt_is_exact_and_only_the_cache_shrinks(policy):
    ids = prompt(100)
    dense = tiny_llama()
    m = slimkit.apply(tiny_llama(), "spatten", token_keep=0.5, policy=policy, prefill_pruning=False,
                      observe_queries=8)
    with torch.no_grad():
        ref = dense(input_ids=ids).logits[:, -1]
        out = m(input_ids=ids, use_cache=True)
    torch.testing.assert_close(out.logits[:, -1], ref, atol=1e-5, rtol=1e-5)      # every layer saw every token
    cache = output_cache(out)
    assert all(lay.keys.shape[2] == 50 for lay in cache.layers)                  # each layer: 50% of 100


def test_cascade_shortens_the_hidden_stream_and_differs_from_dense():
    ids = prompt(100)
    m = slimkit.apply(tiny_llama(), "spatten", token_keep=0.5)
    with torch.no_grad():
        out = m.model(input_ids=ids, use_cache=False)
    assert out.last_hidden_state.shape[1] < 100
    assert m.spatten_stats.layers[-1].macs < 0.7 * m.spatten_stats.layers[-1].dense_macs


def test_a_multi_token_step_keeps_its_own_tokens():
    """Teacher forcing feeds many tokens at once after prefill: eviction runs before their attention,
    so they must not be evicted unread (they would be: they have no score yet)."""
    ids = prompt(100)
    cont = prompt(24, seed=5)
    m = slimkit.apply(tiny_llama(), "spatten", token_keep=0.5, policy="window", observe_queries=4)
    with torch.no_grad():
        cache = output_cache(m(input_ids=ids, use_cache=True))
        m(input_ids=cont, past_key_values=cache, attention_mask=torch.ones(1, 124, dtype=torch.long), use_cache=True)
    state = cache._spatten_state
    for li, slot in enumerate(state.slots):
        if slot is not None and m.model._spatten_runtime.token_ratios[li] < 1.0:
            cols = set(slot[0][0][slot[1][0]].tolist())
            assert set(range(100, 124)) <= cols, li


def test_version_2_configs_keep_their_budget_meaning():
    cfg = SpattenConfig.from_dict({"type": "spatten", "version": 2, "token_keep": 0.5})
    assert cfg.decoder_budget == "pruned_layers"
    assert SpattenConfig(token_keep=0.5).decoder_budget == "kv"
