"""slimkit.apply(model, "lsra"): GPT-2 and BERT-family conversion, report, save/restore, errors."""
from __future__ import annotations

import pytest
import torch

import slimkit
from slimkit.errors import ConfigError, UnsupportedModelError
from slimkit_nlp.compat import cache_kwargs


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      bos_token_id=0, eos_token_id=0)).eval()


def test_convert_tiny_gpt2_keeps_attention_half_and_decodes_incrementally(tmp_path):
    from transformers import DynamicCache

    m = _gpt2()
    orig = {k: v.clone() for k, v in m.state_dict().items()}
    m = slimkit.apply(m, "lsra", conv_type="lightweight", kernel_sizes=[3, 5])
    rep = m.lsra_report
    assert rep.family == "GPT-2" and len(rep.layers) == 2
    assert rep.layers[1]["kept_heads"] == [0, 1] and rep.layers[1]["attn_channels"] == 16
    assert rep.layers[1]["kernel_size"] == 5 and rep.new_parameters > 0 and rep.kept_parameters == 2 * (4 * 16 * 16 + 64)
    assert "must be trained" in str(rep)
    for i in range(2):
        at = m.transformer.h[i].attn.lsra.attn
        W, b = orig[f"transformer.h.{i}.attn.c_attn.weight"], orig[f"transformer.h.{i}.attn.c_attn.bias"]
        assert torch.equal(at.q_proj.weight, W[:16, :16].T) and torch.equal(at.k_proj.weight, W[:16, 32:48].T)
        assert torch.equal(at.v_proj.weight, W[:16, 64:80].T) and torch.equal(at.v_proj.bias, b[64:80])
        assert torch.equal(at.out_proj.weight, orig[f"transformer.h.{i}.attn.c_proj.weight"][:16, :16].T)
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        full = m(x, use_cache=False).logits
        assert torch.isfinite(full).all()
        cache = DynamicCache(config=m.config)
        steps = [m(x[:, :4], **cache_kwargs(cache), use_cache=True).logits]
        steps += [m(x[:, t:t + 1], **cache_kwargs(cache), use_cache=True).logits for t in range(4, 12)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5
    # slimkit save / restore onto a fresh base model (the conversion is deterministic)
    slimkit.save_pretrained(m, tmp_path)
    back = slimkit.from_pretrained(_gpt2(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(back(x, use_cache=False).logits, full)
    # training step reaches the new conv branch
    m.train()
    loss = m(x, labels=x).loss
    loss.backward()
    assert m.transformer.h[0].attn.lsra.conv.conv.weight.grad.abs().sum() > 0


def test_convert_tiny_bert_with_flattened_ffn_and_padding():
    from transformers import BertConfig, BertModel

    m = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64)).eval()
    orig = {k: v.clone() for k, v in m.state_dict().items()}
    m = slimkit.apply(m, "lsra", kernel_sizes=[3, 5], ffn_dim=32, conv_type="dynamic")
    rep = m.lsra_report
    assert rep.family == "Bert" and [r["ffn_after"] for r in rep.layers] == [32, 32]
    assert all(not r["causal"] for r in rep.layers)
    at = m.encoder.layer[0].attention.lsra.attn
    assert torch.equal(at.q_proj.weight, orig["encoder.layer.0.attention.self.query.weight"][:16, :16])
    assert torch.equal(at.out_proj.bias, orig["encoder.layer.0.attention.output.dense.bias"][:16])
    assert torch.equal(m.encoder.layer[0].attention.LayerNorm.weight,
                       orig["encoder.layer.0.attention.output.LayerNorm.weight"])
    assert m.encoder.layer[0].intermediate.dense.out_features == 32
    y = torch.randint(0, 100, (2, 10))
    mask = torch.ones_like(y)
    mask[1, 7:] = 0
    with torch.no_grad():
        out = m(input_ids=y, attention_mask=mask).last_hidden_state
        y2 = y.clone()
        y2[1, 7:] = 5
        out2 = m(input_ids=y2, attention_mask=mask).last_hidden_state
    assert out.shape == (2, 10, 32) and torch.isfinite(out).all()
    assert (out2[1, :7] - out[1, :7]).abs().max() <= 1e-5  # padding never reaches real tokens


def test_convert_real_minilm(minilm_path):
    from transformers import AutoModel

    m = AutoModel.from_pretrained(minilm_path).eval()
    q = m.encoder.layer[3].attention.self.query.weight.clone()
    m = slimkit.apply(m, "lsra", kernel_sizes=[3, 7, 15, 31, 31, 31])
    assert [r["kernel_size"] for r in m.lsra_report.layers] == [3, 7, 15, 31, 31, 31]
    assert m.lsra_report.layers[0]["kept_heads"] == list(range(6))  # 12 heads -> 6 kept, 192 channels
    assert torch.equal(m.encoder.layer[3].attention.lsra.attn.q_proj.weight, q[:192, :192])
    with torch.no_grad():
        out = m(input_ids=torch.randint(1000, 2000, (1, 16))).last_hidden_state
    assert out.shape == (1, 16, 384) and torch.isfinite(out).all()


def test_conversion_errors_are_one_sentence():
    with pytest.raises(UnsupportedModelError, match="lsra supports"):
        slimkit.apply(torch.nn.Linear(3, 3), "lsra")
    with pytest.raises(ConfigError, match="keeps 0 of the 4 heads"):
        slimkit.apply(_gpt2(), "lsra", attention_ratio=0.1)
    with pytest.raises(ConfigError, match="attention_ratio"):
        slimkit.make_config("lsra", attention_ratio=1.0)
    with pytest.raises(ConfigError, match="not divisible by conv_heads"):
        slimkit.apply(_gpt2(), "lsra", conv_heads=5)


def test_lsra_config_round_trip(tmp_path):
    cfg = slimkit.make_config("lsra", conv_type="dynamic", kernel_sizes=[3, 7], ffn_dim=64)
    assert cfg.kernel_sizes == (3, 7)
    cfg.save_pretrained(tmp_path)
    back = slimkit.load_config(tmp_path)
    assert back == cfg and back.to_dict()["type"] == "lsra"
