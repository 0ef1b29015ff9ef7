"""Lite Transformer HF models: cached decoding equals full forward, save/load, Auto classes, training."""
from __future__ import annotations

import math

import pytest
import torch

from slimkit.errors import ConfigError
from slimkit_nlp.compat import cache_kwargs, output_cache
from slimkit_nlp.lsra import LiteTransformerConfig, LiteTransformerForCausalLM, LiteTransformerForConditionalGeneration


def _cfg(**kw):
    base = dict(d_model=32, n_head=2, decoder_layers=3, encoder_layers=2, kernel_sizes=[3, 5, 7],
                encoder_kernel_sizes=[3, 5], conv_heads=4, dropout=0.0, max_position_embeddings=64)
    base.update(kw)
    return LiteTransformerConfig(**base)


@pytest.mark.parametrize("conv_type", ["lightweight", "dynamic"])
def test_causal_lm_incremental_decoding_equals_full_forward(conv_type):
    from transformers import DynamicCache

    m = LiteTransformerForCausalLM(_cfg(conv_type=conv_type)).eval()
    x = torch.randint(0, 256, (2, 16))
    mask = torch.ones_like(x)
    mask[1, :4] = 0  # left padding in the second row
    with torch.no_grad():
        full = m(x, attention_mask=mask, use_cache=False).logits
        cache = DynamicCache(config=m.config)
        assert type(cache.layers[0]).__name__ == "LinearAttentionAndFullAttentionLayer"
        steps = [m(x[:, :5], attention_mask=mask[:, :5], **cache_kwargs(cache), use_cache=True).logits]
        for t in range(5, 16):
            steps.append(m(x[:, t:t + 1], attention_mask=mask[:, :t + 1], **cache_kwargs(cache), use_cache=True).logits)
    inc = torch.cat(steps, 1)
    assert (inc[0] - full[0]).abs().max() <= 1e-5
    assert (inc[1, 4:] - full[1, 4:]).abs().max() <= 1e-5
    assert cache.get_seq_length() == 16
    assert cache.layers[2].conv_states[0].shape == (2, 16, 6)  # last K-1 = 6 inputs of the 16-channel conv half


def test_causal_lm_future_tokens_do_not_change_the_past():
    m = LiteTransformerForCausalLM(_cfg()).eval()
    x = torch.randint(0, 256, (1, 20))
    x2 = x.clone()
    x2[:, 12:] = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        a, b = m(x, use_cache=False).logits, m(x2, use_cache=False).logits
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_generate_with_cache_equals_greedy_without_cache():
    m = LiteTransformerForCausalLM(_cfg()).eval()
    prompt = torch.randint(0, 256, (2, 5))
    out = m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False)
    ids = prompt
    with torch.no_grad():
        for _ in range(12):
            ids = torch.cat([ids, m(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    # beam search reorders the conv buffers together with the keys/values
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=6, num_beams=3, do_sample=False)
    assert torch.equal(m.generate(prompt, use_cache=True, **kw), m.generate(prompt, use_cache=False, **kw))


def test_encoder_decoder_incremental_decoding_and_generate():
    m = LiteTransformerForConditionalGeneration(_cfg()).eval()
    assert m.config.is_encoder_decoder
    src = torch.randint(0, 256, (2, 11))
    src_mask = torch.ones_like(src)
    src_mask[1, 8:] = 0
    dec = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        full = m(input_ids=src, attention_mask=src_mask, decoder_input_ids=dec, use_cache=False).logits
        o = m(input_ids=src, attention_mask=src_mask, decoder_input_ids=dec[:, :4], use_cache=True)
        steps, cache, enc = [o.logits], output_cache(o), (o.encoder_last_hidden_state,)
        for t in range(4, 9):
            o = m(encoder_outputs=enc, attention_mask=src_mask, decoder_input_ids=dec[:, t:t + 1],
                  **cache_kwargs(cache), use_cache=True)
            steps.append(o.logits)
        assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5
        # padded source positions are ignored
        src2 = src.clone()
        src2[1, 8:] = 7
        full2 = m(input_ids=src2, attention_mask=src_mask, decoder_input_ids=dec, use_cache=False).logits
        assert (full2[1] - full[1]).abs().max() <= 1e-5
        out = m.generate(src, attention_mask=src_mask, max_new_tokens=6, do_sample=False)
        ids = torch.full((2, 1), m.config.decoder_start_token_id)
        for _ in range(6):
            nxt = m(input_ids=src, attention_mask=src_mask, decoder_input_ids=ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, nxt.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    labels = torch.randint(0, 256, (2, 9))
    loss = m(input_ids=src, attention_mask=src_mask, labels=labels).loss
    assert torch.isfinite(loss)


def test_save_load_round_trip_and_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    m = LiteTransformerForCausalLM(_cfg(conv_type="dynamic", attention_ratio=0.25, n_head=1)).eval()
    assert m.lm_head.weight is m.model.embed_tokens.weight
    x = torch.randint(0, 256, (2, 10))
    m.save_pretrained(tmp_path / "lm")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    assert type(back) is LiteTransformerForCausalLM
    assert back.config.conv_type == "dynamic" and back.config.kernel_sizes == [3, 5, 7]
    with torch.no_grad():
        assert torch.equal(back(x).logits, m(x).logits)
    cfg = AutoConfig.from_pretrained(tmp_path / "lm")
    assert isinstance(cfg, LiteTransformerConfig) and cfg.layer_types == ["hybrid"] * 3
    s = LiteTransformerForConditionalGeneration(_cfg()).eval()
    s.save_pretrained(tmp_path / "s2s")
    s2 = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "s2s").eval()
    assert type(s2) is LiteTransformerForConditionalGeneration
    with torch.no_grad():
        a = s(input_ids=x, decoder_input_ids=x[:, :4]).logits
        b = s2(input_ids=x, decoder_input_ids=x[:, :4]).logits
    assert torch.equal(a, b)
    assert type(AutoModelForCausalLM.from_config(_cfg())) is LiteTransformerForCausalLM


def test_config_round_trip_defaults_and_errors():
    c = LiteTransformerConfig()
    assert c.kernel_sizes == [3, 7, 15, 31, 31, 31] and c.ffn_dim == c.d_model  # flattened FFN
    assert c.attn_dim == 128 and c.num_hidden_layers == 6 and c.hidden_size == 256
    again = LiteTransformerConfig.from_dict(c.to_dict())
    assert again.to_dict() == c.to_dict()
    assert LiteTransformerConfig(decoder_layers=8).kernel_sizes == [3, 7, 15, 31, 31, 31, 31, 31]
    with pytest.raises(ConfigError, match="conv_type"):
        LiteTransformerConfig(conv_type="depthwise")
    with pytest.raises(ConfigError, match="divisible by n_head"):
        LiteTransformerConfig(d_model=40, n_head=3)


def test_short_training_of_lite_transformer_lowers_the_loss():
    from slimkit_nlp.data import load_text
    from slimkit_nlp.train import train_causal_lm

    m = LiteTransformerForCausalLM(_cfg(d_model=48, n_head=2, decoder_layers=2))
    r = train_causal_lm(m, load_text("train")[:200_000], load_text("validation")[:10_000], block_size=32,
                        batch_size=8, steps=40, lr=3e-3, eval_tokens=2048, show_progress=False)
    assert r["final_train_loss"] < r["initial_loss"] - 1.0
    assert r["eval_perplexity"] < math.exp(r["initial_loss"]) / 4  # held-out text got much more likely
