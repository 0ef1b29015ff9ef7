"""Settings that would make an NLP technique do nothing, or the wrong thing, are refused with the reason."""
import pytest
import torch

import slimkit
from slimkit import ConfigError
from slimkit_nlp.hat.space import HatSpace
from slimkit_nlp.spatten import SpattenConfig

from ._hat_common import tiny_space


def _one_sentence(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.count("; ") >= 1, msg    # the problem; the fix
    return msg


def tiny_bert(layers=4, heads=4, attn="eager"):
    import transformers as tf
    cfg = tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=64, max_position_embeddings=64, attn_implementation=attn)
    torch.manual_seed(0)
    return tf.BertModel(cfg).eval()


def tiny_gpt2(positions=64, layers=2):
    import transformers as tf
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=layers, n_head=4,
                                            n_positions=positions)).eval()


# -- spatten ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("options,needle", [
    (dict(token_keep=0.5, token_start=1.0), "token_start=1.0"),
    (dict(head_keep=0.5, head_start=1.0), "head_start=1.0"),
    (dict(token_keep=1.0, pruned_tokens="merge"), "pruned_tokens='merge'"),
    (dict(token_keep=1.0, generation_pruning=True), "generation_pruning=True"),
    (dict(token_keep=1.0, prefill_pruning=False), "prefill_pruning=False"),
])
def test_spatten_flags_that_cannot_act_are_refused(options, needle):
    with pytest.raises(ConfigError) as e:
        SpattenConfig(**options)
    assert needle in _one_sentence(e)
    # token_keep=1.0 alone stays allowed (the exactness check), and so do the flags once something is pruned
    SpattenConfig(token_keep=1.0)
    SpattenConfig(token_keep=0.5, pruned_tokens="merge", generation_pruning=True, prefill_pruning=False)
    # a version-2 config at token_keep=1.0 still loads: its implicit generation pruning had nothing to evict
    old = SpattenConfig.from_dict({"type": "spatten", "version": 2, "token_keep": 1.0})
    assert old.generation_pruning is False
    with pytest.raises(ConfigError, match="generation_pruning"):
        SpattenConfig.from_dict({"type": "spatten", "version": 3, "token_keep": 1.0, "generation_pruning": True})


def test_spatten_token_pruning_that_never_acts_on_the_model_is_refused():
    with pytest.raises(ConfigError) as e:                   # the only layer scores the tokens
        slimkit.apply(tiny_bert(layers=1), "spatten", token_keep=0.5)
    assert "1-layer" in _one_sentence(e)
    with pytest.raises(ConfigError) as e:                   # ceil(0.6 * 2) = 2: no layer left to prune
        slimkit.apply(tiny_bert(layers=2), "spatten", token_keep=0.5, token_start=0.6)
    msg = _one_sentence(e)
    assert "2-layer" in msg and "token_start <= 0.5" in msg
    slimkit.apply(tiny_bert(layers=2), "spatten", token_keep=0.5, token_start=0.5)   # the fix works


def test_spatten_head_keep_is_checked_against_the_head_count():
    with pytest.raises(ConfigError) as e:                   # 0.9 x 4 heads rounds to 4 in every layer
        slimkit.apply(tiny_bert(), "spatten", token_keep=1.0, head_keep=0.9)
    msg = _one_sentence(e)
    assert "all 4 head units" in msg and "head_keep <= 0.89 " in msg
    with pytest.raises(ConfigError) as e:                   # less than one head asked: one would stay anyway
        slimkit.apply(tiny_bert(), "spatten", token_keep=1.0, head_keep=0.1)
    assert "less than one of the 4 head units" in _one_sentence(e)
    with pytest.raises(ConfigError) as e:
        slimkit.apply(tiny_bert(heads=1), "spatten", token_keep=1.0, head_keep=0.5)
    assert "single head unit" in _one_sentence(e)
    with pytest.raises(ConfigError) as e:                   # ceil(0.8 * 4) = 4 layers without head pruning
        slimkit.apply(tiny_bert(), "spatten", token_keep=1.0, head_keep=0.5, head_start=0.8)
    assert "head_start=0.8" in _one_sentence(e)
    m = slimkit.apply(tiny_bert(), "spatten", token_keep=1.0, head_keep=0.75)   # still fine
    assert min(m._spatten_runtime.unit_counts) < 4


def test_spatten_refusal_leaves_the_model_untouched():
    model = tiny_bert(attn="sdpa")
    with pytest.raises(ConfigError):
        slimkit.apply(model, "spatten", token_keep=1.0, head_keep=0.9)
    assert model.config._attn_implementation == "sdpa" and "forward" not in model.__dict__


# -- progressive-quant -------------------------------------------------------------------------------
def test_pq_groups_longer_than_the_model_are_refused():
    with pytest.raises(ConfigError) as e:                   # 32 + 8 > 32 positions: nothing ever quantized
        slimkit.apply(tiny_gpt2(positions=32), "progressive-quant")
    msg = _one_sentence(e)
    assert "key_group=32 + residual_length=8 = 40" in msg and "32 positions" in msg
    slimkit.apply(tiny_gpt2(positions=32), "progressive-quant", key_group=16, residual_length=8)
    slimkit.apply(tiny_gpt2(positions=32), "progressive-quant", layout="token", msb_bits=4, lsb_bits=4)


def test_pq_groups_that_do_not_fill_whole_bytes_are_refused():
    with pytest.raises(ConfigError) as e:                   # 1-bit values pack 8 tokens per byte
        slimkit.make_config("progressive-quant", value_bits=1, key_group=12)
    msg = _one_sentence(e)
    assert "key_group=12 is not a multiple of 8" in msg and "key_group=8" in msg
    slimkit.make_config("progressive-quant", value_bits=1, key_group=16)


# -- lsra ------------------------------------------------------------------------------------------
def test_lsra_kernels_that_cannot_work_are_refused():
    with pytest.raises(ConfigError) as e:
        slimkit.make_config("lsra", kernel_sizes=[3, 1])
    assert "size of 1" in _one_sentence(e)
    with pytest.raises(ConfigError) as e:                   # 31 taps, 16 positions
        slimkit.apply(tiny_gpt2(positions=16), "lsra", kernel_sizes=[3, 31])
    msg = _one_sentence(e)
    assert "kernel size 31 of layer 1" in msg and "at most 16" in msg
    with pytest.raises(ConfigError) as e:                   # bidirectional: an even window is off-centre
        slimkit.apply(tiny_bert(layers=2), "lsra", kernel_sizes=[3, 4])
    assert "even" in _one_sentence(e)
    slimkit.apply(tiny_gpt2(), "lsra", kernel_sizes=[2, 4])   # causal convs may be even


# -- hat -------------------------------------------------------------------------------------------
def test_hat_spaces_that_would_do_the_wrong_thing_are_refused():
    with pytest.raises(ConfigError) as e:                   # a span of 4 over at most 3 encoder layers
        tiny_space(ende_span_choices=[1, 4])
    assert "at most 3" in _one_sentence(e)
    with pytest.raises(ConfigError) as e:
        tiny_space("decoder", decoder_embed_choices=[16], decoder_layer_choices=[2], decoder_ffn_choices=[32],
                   decoder_head_choices=[2])
    assert "single architecture" in _one_sentence(e)
    with pytest.raises(ConfigError) as e:
        tiny_space(eos_token_id=20)                         # vocab_size 20
    assert "eos_token_id" in _one_sentence(e)
    with pytest.raises(ConfigError, match="non-empty"):
        tiny_space(decoder_ffn_choices=[])
    # the decoder-only task ignores the encoder fields, spans included
    assert HatSpace(task="decoder", encoder_layer_choices=[1], ende_span_choices=[3]).task == "decoder"
