"""The family adapters reproduce each model's own forward pass, layer by layer."""
import pytest
import torch
from torch import nn

import slimkit
from slimkit_nlp.families import FamilyAdapter, register_family, resolve_family, unregister_family


def tiny(kind):
    import transformers as tf
    if kind == "bert":
        cfg = tf.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
        return tf.BertModel(cfg)
    if kind == "roberta":
        cfg = tf.RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=70, attn_implementation="eager")
        return tf.RobertaForSequenceClassification(cfg)
    if kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                            attn_implementation="eager")
        return tf.GPT2LMHeadModel(cfg)
    cfg = tf.LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         attn_implementation="eager")
    return tf.LlamaForCausalLM(cfg)


def adapter_forward(model, ids, heads_all=False):
    fam = resolve_family(model)
    bb = fam.backbone(model)
    B, L = ids.shape
    pos = torch.arange(L).expand(B, L)
    h = fam.embed(bb, ids, None, pos)
    rot = fam.rotary(bb, h, pos)
    mask = torch.zeros(B, 1, L, L)
    if fam.causal:
        mask = mask.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), torch.finfo(h.dtype).min)
    heads = torch.arange(fam.num_units(bb)).expand(B, -1) if heads_all else None
    attn_fn = fam.eager_attention()
    for layer in fam.layers(bb):
        att = fam.attention(layer)
        q, k, v = fam.project_qkv(layer, fam.attn_input(layer, h), heads, rot)
        ctx, w = attn_fn(att, q, k, v, mask, scaling=att.scaling, dropout=0.0)
        assert w.shape[-2:] == (L, L)
        h = fam.after_attention(layer, h, fam.project_out(layer, ctx.reshape(B, L, -1), heads))
        h = fam.feed_forward(layer, h)
    return fam.final_norm(bb, h)


@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2", "llama"])
def test_adapter_loop_equals_model(kind):
    model = tiny(kind).eval()
    ids = torch.randint(3, 50, (2, 9))
    fam = resolve_family(model)
    with torch.no_grad():
        ref = fam.backbone(model)(input_ids=ids).last_hidden_state
        for heads_all in (False, True):
            out = adapter_forward(model, ids, heads_all)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert len(fam.attention_modules(model)) == 2


def test_family_names():
    assert resolve_family(tiny("bert")).name == "bert"
    assert resolve_family(tiny("roberta")).name == "bert"
    assert resolve_family(tiny("gpt2")).name == "gpt2"
    assert resolve_family(tiny("llama")).name == "llama"


def test_unsupported_family_lists_supported():
    with pytest.raises(slimkit.UnsupportedModelError) as e:
        resolve_family(nn.Linear(3, 3))
    msg = str(e.value)
    for name in ("bert", "gpt2", "llama"):
        assert name in msg


def test_register_family_plugin_hook():
    class LinearFamily(FamilyAdapter):
        name = "toy-linear"
        summary = "nn.Linear stand-in"

        def backbone_classes(self):
            return (nn.Linear,)

    register_family(LinearFamily())
    try:
        assert resolve_family(nn.Linear(2, 2)).name == "toy-linear"
        with pytest.raises(ValueError):
            register_family(LinearFamily())
    finally:
        unregister_family("toy-linear")
    with pytest.raises(slimkit.UnsupportedModelError):
        resolve_family(nn.Linear(2, 2))
