"""slimkit.apply(model, "hat") from a tiny GPT-2: the largest SubTransformer is the model."""
import random

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import slimkit
from slimkit_nlp.hat.supernet import SuperTransformer


def _gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=64, n_positions=32,
                                      bos_token_id=1, eos_token_id=2)).eval()


def test_apply_from_gpt2_reproduces_outputs(tmp_path):
    gpt2 = _gpt2()
    net = slimkit.apply(gpt2, "hat")
    assert isinstance(net, SuperTransformer) and not net.training
    space = net.space
    assert max(space.decoder_embed_choices) == 32 and max(space.decoder_layer_choices) == 3
    assert max(space.decoder_ffn_choices) == 128 and max(space.decoder_head_choices) == 4
    assert len(space.decoder_embed_choices) > 1
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        ref = gpt2(ids).logits
        assert (net(space.largest(), ids) - ref).abs().max() <= 1e-5
        # a smaller SubTransformer runs and exports to an equal standalone model
        sub = space.sample(random.Random(1))
        assert (net(sub, ids) - net.export(sub)(input_ids=ids).logits).abs().max() <= 1e-5
        assert (net.export()(input_ids=ids).logits - ref).abs().max() <= 1e-5
    # slimkit's save/restore: re-apply to a fresh base model, then load the weights
    slimkit.save_pretrained(net, tmp_path)
    back = slimkit.from_pretrained(_gpt2(), tmp_path)
    with torch.no_grad():
        assert torch.equal(back(space.largest(), ids), net(space.largest(), ids))


def test_apply_from_config_and_options():
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32)
    net = slimkit.apply(cfg, "hat", embed_choices=[16], head_choices=[2], layer_choices=[1], ffn_choices=[64])
    s = net.space
    assert s.decoder_embed_choices == [16, 32] and s.decoder_head_choices == [2, 4]
    assert s.decoder_layer_choices == [1, 2] and s.decoder_ffn_choices == [64, 128]
    import pytest

    from slimkit.errors import ConfigError, UnsupportedModelError
    with pytest.raises(ConfigError, match="exceeds the model"):
        slimkit.apply(cfg, "hat", embed_choices=[64])
    with pytest.raises(UnsupportedModelError, match="GPT-2"):
        slimkit.apply(torch.nn.Linear(2, 2), "hat")
