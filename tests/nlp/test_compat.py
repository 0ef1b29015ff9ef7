"""The KV-cache argument across transformers releases (``past_key_values`` became ``cache`` in 5.24)."""
import pytest
import torch
import transformers as tf

from slimkit_nlp.compat import cache_kwargs, cache_name, output_cache, pick_cache


def test_cache_name_follows_the_installed_release():
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16)).eval()
    cache = tf.DynamicCache(config=gpt2.config)
    with torch.no_grad():
        out = gpt2(torch.randint(0, 32, (1, 5)), use_cache=True, **cache_kwargs(cache))
    assert output_cache(out) is cache and cache.get_seq_length() == 5     # the cache we passed was used
    assert cache_name() in ("cache", "past_key_values")


def test_pick_cache_takes_either_name_once():
    c = object()
    assert pick_cache(c, None) is c and pick_cache(None, c) is c and pick_cache(c, c) is c
    with pytest.raises(ValueError, match="cache= .* or past_key_values="):
        pick_cache(object(), object())
