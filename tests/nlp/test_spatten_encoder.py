"""SpAtten on encoders: physical removal, schedule, protection, padded batches, heads, config round trip."""
import math
import warnings

import pytest
import torch

import slimkit
from slimkit_nlp.spatten import SpattenConfig, keep_schedule


def tiny_bert(layers=6, cls=None):
    import transformers as tf
    cfg = tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    torch.manual_seed(0)
    return (cls or tf.BertModel)(cfg).eval()


def ids_batch(B=3, L=24):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 64, (B, L), generator=g)
    ids[:, 0] = 1                      # "CLS"
    am = torch.ones_like(ids)
    lens = [L, L - 7, L - 12][:B]
    for b, n in enumerate(lens):
        ids[b, n - 1] = 2              # "SEP"
        ids[b, n:] = 0
        am[b, n:] = 0
    return ids, am, lens


def test_schedule_shape_and_mean():
    s = keep_schedule(6, 0.5, 0.15)
    assert s[0] == 1.0 and all(r < 1.0 for r in s[1:])          # first 15% (>= 1 layer) unpruned
    assert all(a >= b for a, b in zip(s, s[1:]))                  # non-increasing (cascade)
    assert math.isclose(sum(s[1:]) / 5, 0.5)                      # average over pruned layers = target
    s12 = keep_schedule(12, 0.3, 0.15, slope=1.0)
    assert s12[:2] == [1.0, 1.0] and math.isclose(sum(s12[2:]) / 10, 0.3) and min(s12) >= 0.0
    assert keep_schedule(4, 1.0, 0.15) == [1.0] * 4
    assert keep_schedule(10, 0.5, 0.3, 0) [:3] == [1.0] * 3 and keep_schedule(10, 0.5, 0.3, 0)[3] < 1


def test_physical_removal_and_per_sample_k():
    m = slimkit.apply(tiny_bert(), "spatten", token_keep=0.5)
    ids, am, lens = ids_batch()
    with torch.no_grad():
        out = m(input_ids=ids, attention_mask=am)
    sched = keep_schedule(6, 0.5, 0.15, slope=SpattenConfig().token_slope)
    st = m.spatten_stats
    expect = [sum(math.ceil(r * n - 1e-9) for n in lens) / 3 for r in sched]
    assert [round(s.tokens_in, 4) for s in st.layers] == [round(e, 4) for e in expect]
    kmax = max(math.ceil(sched[-1] * n - 1e-9) for n in lens)
    assert out.last_hidden_state.shape == (3, kmax, 32)           # physically shrunk
    assert out.kept_indices.shape == (3, kmax) and out.kept_attention_mask.shape == (3, kmax)
    for b, n in enumerate(lens):
        k = math.ceil(sched[-1] * n - 1e-9)
        idx = out.kept_indices[b, :k]
        assert int(out.kept_attention_mask[b].sum()) == k
        assert torch.all(idx[1:] > idx[:-1])                       # original order
        assert idx[0] == 0 and idx[-1] == n - 1                     # CLS and SEP protected
        assert torch.all(out.kept_indices[b, k:] == -1)
    assert st.macs < st.dense_macs and st.macs_saved > 0


def test_protect_tokens_never_pruned():
    ids, am, lens = ids_batch()
    ids[0, 5] = ids[0, 9] = ids[1, 3] = 7
    m = slimkit.apply(tiny_bert(), "spatten", token_keep=0.3, protect_tokens=[7])
    with torch.no_grad():
        out = m(input_ids=ids, attention_mask=am)
    for b in range(2):
        want = set((ids[b, :lens[b]] == 7).nonzero().flatten().tolist())
        assert want <= set(out.kept_indices[b].tolist())


@pytest.mark.parametrize("pruned_tokens", ["drop", "merge"])
def test_padded_batch_equals_single_runs(pruned_tokens):
    m = slimkit.apply(tiny_bert(), "spatten", token_keep=0.5, head_keep=0.5, pruned_tokens=pruned_tokens)
    ids, am, lens = ids_batch()
    with torch.no_grad():
        out = m(input_ids=ids, attention_mask=am)
        for b, n in enumerate(lens):
            one = m(input_ids=ids[b:b + 1, :n])
            k = one.last_hidden_state.shape[1]
            assert torch.equal(one.kept_indices[0], out.kept_indices[b, :k])
            torch.testing.assert_close(one.last_hidden_state[0], out.last_hidden_state[b, :k], atol=2e-5, rtol=1e-4)
            assert torch.equal(one.kept_token_weights[0], out.kept_token_weights[b, :k])
            assert float(out.kept_token_weights[b].sum()) == (n if pruned_tokens == "merge" else k)
            own = out.token_owner[b]                                   # composed over the cascade of prunes
            counts = torch.bincount(own[own >= 0], minlength=out.kept_token_weights.shape[1]).float()
            assert torch.equal(counts, out.kept_token_weights[b])


def tiny_roberta_cls():
    import transformers as tf
    cfg = tf.RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=70, attn_implementation="eager")
    torch.manual_seed(0)
    return tf.RobertaForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_keep_one_equals_unpruned_and_task_head(family):
    import transformers as tf
    make = (lambda: tiny_bert(cls=tf.BertForSequenceClassification)) if family == "bert" else tiny_roberta_cls
    ids, am, _ = ids_batch()
    with torch.no_grad():
        want = make()(input_ids=ids, attention_mask=am).logits
        m = slimkit.apply(make(), "spatten", token_keep=1.0)
        torch.testing.assert_close(m(input_ids=ids, attention_mask=am).logits, want, atol=1e-6, rtol=1e-5)
        m = slimkit.apply(make(), "spatten", token_keep=0.4)
        logits = m(input_ids=ids, attention_mask=am).logits           # the head reads CLS (kept, slot 0)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    assert m.spatten_stats.layers[-1].tokens_in < ids.shape[1] * 0.5


def _mask_heads_reference(model, fam, head_ids, ids, am):
    """The unpruned model with the pruned heads' outputs zeroed before the output projection."""
    bb = fam.backbone(model)
    hooks = []
    d = fam.head_dim(bb)
    g = fam.num_heads(bb) // fam.num_units(bb)
    for layer, kept in zip(fam.layers(bb), head_ids):
        if kept is None:
            continue
        proj = {"bert": lambda l: l.attention.output.dense, "llama": lambda l: l.self_attn.o_proj,
                "gpt2": lambda l: l.attn.c_proj}[fam.name](layer)
        keep = torch.zeros(kept.shape[0], fam.num_units(bb) * g * d)
        for b in range(kept.shape[0]):
            for u in kept[b].tolist():
                keep[b, u * g * d:(u + 1) * g * d] = 1

        def pre(mod, args, keep=keep):
            return (args[0] * keep[:, None, :],)
        hooks.append(proj.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            return bb(input_ids=ids, attention_mask=am, use_cache=False).last_hidden_state
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_head_pruning_equals_masking(kind):
    import transformers as tf

    from slimkit_nlp.families import resolve_family
    if kind == "bert":
        make = lambda: tiny_bert()   # noqa: E731
    else:
        def make():
            torch.manual_seed(0)
            return tf.LlamaModel(tf.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=5,
                                                num_attention_heads=8, num_key_value_heads=4, intermediate_size=64,
                                                attn_implementation="eager")).eval()
    ids, am, _ = ids_batch()
    if kind == "llama":
        am, ids = am.flip(1), ids.flip(1)  # left padding for the decoder
    m = slimkit.apply(make(), "spatten", token_keep=1.0, head_keep=0.5)
    with torch.no_grad():
        out = m(input_ids=ids, attention_mask=am, **({"use_cache": False} if kind == "llama" else {}))
    st = m.spatten_stats
    assert st.layers[-1].heads_kept < st.layers[0].heads_kept              # heads really skipped
    assert st.macs < st.dense_macs
    ref = _mask_heads_reference(make(), resolve_family(m), st.head_ids, ids, am)
    valid = am.bool()
    torch.testing.assert_close(out.last_hidden_state[valid], ref[valid], atol=2e-5, rtol=1e-4)


def test_sdpa_switched_with_warning_and_bad_options():
    import transformers as tf
    cfg = tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, attn_implementation="sdpa")
    model = tf.BertModel(cfg)
    with pytest.warns(UserWarning, match="eager"):
        slimkit.apply(model, "spatten")
    assert model.config._attn_implementation == "eager"
    with pytest.raises(slimkit.ConfigError, match="token_keep"):
        slimkit.apply(tiny_bert(), "spatten", token_keep=1.5)
    with pytest.raises(slimkit.UnsupportedModelError, match="bert"):
        slimkit.apply(torch.nn.Linear(2, 2), "spatten")


def test_config_round_trip(tmp_path):
    import transformers as tf

    from slimkit_nlp.spatten import load_pretrained, spatten_config
    m = slimkit.apply(tiny_bert(), "spatten", token_keep=0.4, head_keep=0.75, protect_tokens=[3])
    cfg = SpattenConfig(token_keep=0.4, head_keep=0.75, protect_tokens=[3])
    assert SpattenConfig.from_dict(cfg.to_dict()) == cfg
    m.save_pretrained(tmp_path / "hf")                                # HF-native: config.json carries it
    back = load_pretrained(tmp_path / "hf", tf.BertModel)
    assert spatten_config(back) == cfg
    ids, am, _ = ids_batch()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, attention_mask=am).last_hidden_state,
                                   m(input_ids=ids, attention_mask=am).last_hidden_state)
    slimkit.save_pretrained(m, tmp_path / "sk")                       # slimkit path
    again = slimkit.from_pretrained(tiny_bert(), tmp_path / "sk")
    assert again.slimkit_configs[-1] == cfg
    with torch.no_grad():
        assert again(input_ids=ids, attention_mask=am).last_hidden_state.shape[1] < ids.shape[1]


def test_real_minilm(minilm_path):
    from transformers import AutoModel, AutoTokenizer

    from slimkit_nlp.spatten.textdata import mean_pool, wordpiece_passages
    tok = AutoTokenizer.from_pretrained(minilm_path)
    ids = wordpiece_passages(tok, 128, 2)
    dense = AutoModel.from_pretrained(minilm_path, attn_implementation="eager").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = slimkit.apply(AutoModel.from_pretrained(minilm_path).eval(), "spatten", token_keep=0.7)
    with torch.no_grad():
        ref = mean_pool(dense(input_ids=ids).last_hidden_state, torch.ones_like(ids))
        out = m(input_ids=ids)
    emb = mean_pool(out.last_hidden_state, out.kept_attention_mask)
    cos = torch.cosine_similarity(emb, ref)
    assert out.last_hidden_state.shape[1] < 128
    assert (cos > 0.85).all(), cos
    assert m.spatten_stats.macs_ratio > 1.3


def test_local_value_pruning_skips_small_probabilities():
    ids, am, _ = ids_batch()
    with torch.no_grad():
        full = slimkit.apply(tiny_bert(), "spatten", token_keep=1.0)(input_ids=ids, attention_mask=am)
        m = slimkit.apply(tiny_bert(), "spatten", token_keep=1.0, value_keep=0.5)
        out = m(input_ids=ids, attention_mask=am)
    fetched = [s.values_fetched for s in m.spatten_stats.layers]
    assert all(0.45 <= f <= 0.7 for f in fetched), fetched
    assert not torch.allclose(out.last_hidden_state, full.last_hidden_state)
    cos = torch.cosine_similarity(out.last_hidden_state, full.last_hidden_state, dim=-1)[am.bool()]
    assert cos.mean() > 0.9


def test_stats_match_counted_mult_adds():
    from slimkit.measure import count_macs
    ids, am, _ = ids_batch()
    dense = count_macs(tiny_bert(), input_ids=ids, attention_mask=am).total
    m = slimkit.apply(tiny_bert(), "spatten", token_keep=0.5, head_keep=0.5)
    pruned = count_macs(m, input_ids=ids, attention_mask=am).total
    st = m.spatten_stats
    assert pruned < dense
    # the counter sees the real (sliced, shrunk) work; stats estimate the same saving
    assert abs((dense - pruned) - st.macs_saved) <= 0.02 * st.dense_macs


def test_full_hidden_state_scatters_kept_and_freezes_pruned():
    """``full_hidden_state (B, L, H)``: kept positions hold the pruned model's final states, pruned
    positions the state entering the last layer that attended to them (with ``drop`` their output
    projection and feed-forward there are skipped), padding zeros; keep 1.0 equals the dense model."""
    ids, am, lens = ids_batch()
    B, L = ids.shape
    with torch.no_grad():
        dense = tiny_bert()(input_ids=ids, attention_mask=am, output_hidden_states=True)
        one = slimkit.apply(tiny_bert(), "spatten", token_keep=1.0)(input_ids=ids, attention_mask=am)
        # only the last layer (index 5) prunes; tokens leave after layer 4's attention, keeping the
        # dense state entering layer 4
        m = slimkit.apply(tiny_bert(), "spatten", token_keep=0.5, token_start=0.8)
        out = m(input_ids=ids, attention_mask=am)
    assert m.spatten_stats.layers[4].tokens_in > m.spatten_stats.layers[5].tokens_in
    real = am.bool()
    torch.testing.assert_close(one.full_hidden_state[real], dense.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    full = out.full_hidden_state
    assert full.shape == (B, L, 32) and out.last_hidden_state.shape[1] < L
    n_pruned = 0
    for b in range(B):
        kept = out.kept_indices[b][out.kept_attention_mask[b].bool()]
        torch.testing.assert_close(full[b, kept], out.last_hidden_state[b, :len(kept)])
        pruned = torch.ones(L, dtype=torch.bool)
        pruned[kept] = False
        pruned[lens[b]:] = False
        n_pruned += int(pruned.sum())
        torch.testing.assert_close(full[b, pruned], dense.hidden_states[4][b, pruned], atol=1e-5, rtol=1e-5)
        assert (out.pruned_at_layer[b, pruned] == 5).all() and (out.pruned_at_layer[b, kept] == 6).all()
        assert not torch.allclose(full[b, kept], dense.last_hidden_state[b, kept], atol=1e-4)
        assert (full[b, lens[b]:] == 0).all()
    assert n_pruned > 0


def test_drop_skips_dead_rows_and_equals_dropping_before_the_layer():
    """``drop`` written two ways: the tokens layer 5 drops leave after layer 4's attention (their
    output projection and feed-forward are skipped), so layer 5 must see exactly the dense states
    entering it at the kept positions; and layer 4 really computes fewer rows than it attends."""
    ids, am, lens = ids_batch()
    dense_model = tiny_bert()
    with torch.no_grad():
        dense = dense_model(input_ids=ids, attention_mask=am, output_hidden_states=True)
        m = slimkit.apply(tiny_bert(), "spatten", token_keep=0.5, token_start=0.8)
        out = m(input_ids=ids, attention_mask=am)
    last = dense_model.encoder.layer[5]
    for b, n in enumerate(lens):
        k = int(out.kept_attention_mask[b].sum())
        assert k < n
        with torch.no_grad():
            want = last(dense.hidden_states[5][b, out.kept_indices[b, :k]][None])
        want = want[0] if isinstance(want, tuple) else want
        torch.testing.assert_close(out.last_hidden_state[b, :k], want[0], atol=2e-5, rtol=1e-4)
    st = m.spatten_stats
    dense_ffn = st.layers[4].dense_macs
    assert st.layers[4].tokens_in == st.layers[3].tokens_in and st.layers[4].macs < 0.9 * dense_ffn


def test_merge_equals_manual_merge_and_proportional_attention():
    """``pruned_tokens="merge"`` written two ways: only the last layer prunes, so its input must be the
    dense states entering it with every pruned token averaged (size-weighted) into its most similar
    kept, unprotected token, and the layer must attend with log(size) added to the keys' logits."""
    ids, am, lens = ids_batch()
    dense_model = tiny_bert()
    with torch.no_grad():
        dense = dense_model(input_ids=ids, attention_mask=am, output_hidden_states=True)
        drop = slimkit.apply(tiny_bert(), "spatten", token_keep=0.5, token_start=0.8)(input_ids=ids, attention_mask=am)
        m = slimkit.apply(tiny_bert(), "spatten", token_keep=0.5, token_start=0.8, pruned_tokens="merge")
        out = m(input_ids=ids, attention_mask=am)
    assert torch.equal(out.kept_indices, drop.kept_indices)        # merging does not change the selection
    last = dense_model.encoder.layer[5]
    n_merged = 0
    for b, n in enumerate(lens):
        k = int(out.kept_attention_mask[b].sum())
        kept = out.kept_indices[b, :k]
        h = dense.hidden_states[5][b, :n]
        pruned = [i for i in range(n) if i not in set(kept.tolist())]
        targets = [j for j, c in enumerate(kept.tolist()) if c not in (0, n - 1)]     # CLS and SEP stay pure
        hk, size = h[kept].clone(), torch.ones(k)
        acc, add = torch.zeros_like(hk), torch.zeros(k)
        hn = torch.nn.functional.normalize(h, dim=-1)
        owner = torch.full((ids.shape[1],), -1)
        owner[kept] = torch.arange(k)
        for p in pruned:
            t = max(targets, key=lambda j: float(hn[p] @ hn[kept[j]]))
            acc[t] += h[p]
            add[t] += 1
            owner[p] = t
        assert torch.equal(out.token_owner[b], owner)                 # who stands for each input token
        assert (drop.token_owner[b, pruned] == -1).all() and torch.equal(drop.token_owner[b, kept], torch.arange(k))
        hk = torch.where((add > 0)[:, None], (hk + acc) / (1 + add)[:, None], hk)
        size = size + add
        n_merged += int(add.sum())
        assert torch.equal(out.kept_token_weights[b, :k], size) and float(size.sum()) == n
        with torch.no_grad():
            want = last(hk[None], attention_mask=size.log()[None, None, None, :])
        want = want[0] if isinstance(want, tuple) else want
        torch.testing.assert_close(out.last_hidden_state[b, :k], want[0], atol=2e-5, rtol=1e-4)
    assert n_merged > 0


def test_merge_is_for_encoders():
    import transformers as tf
    cfg = tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, attn_implementation="eager")
    with pytest.raises(slimkit.ConfigError, match="pruned_tokens='merge' is for encoders"):
        slimkit.apply(tf.GPT2LMHeadModel(cfg), "spatten", pruned_tokens="merge")


def test_version_one_config_keeps_its_meaning():
    v1 = {"type": "spatten", "version": 1, "token_keep": 0.5, "policy": "spatten", "recent_share": 0.5,
          "sink_tokens": 4}
    cfg = SpattenConfig.from_dict(v1)
    assert cfg.recent_share == 0.0 and cfg.sink_tokens == 1 and cfg.pruned_tokens == "drop"
    h2o = SpattenConfig.from_dict({**v1, "policy": "h2o", "recent_share": 0.3})
    assert h2o.recent_share == 0.3 and h2o.sink_tokens == 4
    assert SpattenConfig.from_dict(SpattenConfig(recent_share="auto").to_dict()).recent_share == "auto"
    with pytest.raises(slimkit.ConfigError, match="recent_share"):
        SpattenConfig(recent_share=1.5)
    with pytest.raises(slimkit.ConfigError, match="recent_share"):
        SpattenConfig(recent_share="wide")


def test_encoder_attention_equals_eager_reference():
    """The encoder fast path (bias channel, head blocks, sdpa when no scores are needed) computes the same
    context as eager attention with an additive key mask, and ``received`` = probabilities summed over
    heads and real queries."""
    from transformers.models.bert.modeling_bert import eager_attention_forward

    from slimkit_nlp.spatten.attention import encoder_attention

    g = torch.Generator().manual_seed(0)
    B, H, L, d = 2, 5, 7, 8
    q, k, v = (torch.randn(B, H, L, d, generator=g) for _ in range(3))
    bias = torch.randn(B, L, generator=g)
    bias[1, 5:] = -1e9                                               # padding keys of sample 1
    q_valid = torch.ones(B, L, dtype=torch.bool)
    q_valid[1, 5:] = False

    class Att(torch.nn.Module):
        pass
    want, probs = eager_attention_forward(Att().eval(), q, k, v, bias[:, None, None, :], scaling=d ** -0.5)
    ctx, received = encoder_attention(q, k, v, bias, d ** -0.5, q_valid, True)
    torch.testing.assert_close(ctx, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(received, (probs * q_valid[:, None, :, None]).sum((1, 2)), atol=1e-5, rtol=1e-5)
    fused, none = encoder_attention(q, k, v, bias, d ** -0.5, q_valid, False)
    assert none is None
    torch.testing.assert_close(fused, want, atol=1e-5, rtol=1e-5)


def test_selection_ceiling_pools_the_right_subsets(minilm_path):
    """The bench's selection ceiling: keeping every token reproduces the unpruned mean exactly; at
    keep 0.4 every subset loses something and the least attended subset is the worst."""
    from transformers import AutoTokenizer

    from slimkit_nlp.benchmarks import spatten as bench
    from slimkit_nlp.spatten.textdata import wordpiece_passages

    tok = AutoTokenizer.from_pretrained(minilm_path)
    eager = bench._minilm()
    with torch.inference_mode():
        ids = wordpiece_passages(tok, 96, 2)
        full, scores = bench._dense_states_and_scores(eager, ids)
        whole, part = bench._selection_ceiling(ids, full, scores, (1.0, 0.4))
    assert set(whole) == {"token_keep", "top_attended", "random", "least_attended", "drop_with_exact_pruned"}
    for name in ("top_attended", "random", "least_attended", "drop_with_exact_pruned"):
        assert whole[name] == pytest.approx(1.0, abs=1e-5)
        assert 0.5 < part[name] < 0.9999
    assert part["least_attended"] < part["top_attended"]
