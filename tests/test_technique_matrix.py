"""One matrix over every registered technique: apply to a small real model, run it, save, restore.

Each technique needs an example here (a test fails for a technique without one), so a new technique
cannot land without proving that `apply` -> `save_pretrained` -> `from_pretrained` restores it exactly.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit


def _seeded(seed):
    torch.manual_seed(seed)


def _tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    _seeded(seed)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, attn_implementation="eager")
    return GPT2LMHeadModel(cfg).eval()


def _tiny_bert(seed=0):
    from transformers import BertConfig, BertModel

    _seeded(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")
    return BertModel(cfg).eval()


def _tiny_resnet(seed=0):
    from transformers import ResNetConfig, ResNetForImageClassification

    _seeded(seed)
    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    return ResNetForImageClassification(cfg).eval()


def _conv3d_net(seed=0):
    _seeded(seed)
    return nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 4, (3, 3, 3), padding=1)).eval()


def _logits(out):
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    return out[0]


IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))

# name -> (base model builder, options, forward)
EXAMPLES = {
    "tsm": (_tiny_resnet, {"n_segment": 4}, lambda m: _logits(m(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))))),
    "r2plus1d": (_conv3d_net, {}, lambda m: m(torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1)))),
    "spatten": (_tiny_bert, {"token_keep": 0.5}, lambda m: _logits(m(input_ids=IDS))),
    "progressive-quant": (_tiny_gpt2, {"key_group": 16}, lambda m: _logits(m(input_ids=IDS))),
    "lsra": (_tiny_gpt2, {}, lambda m: _logits(m(input_ids=IDS))),
    "hat": (_tiny_gpt2, {}, lambda m: _logits(m(input_ids=IDS))),
}


def test_every_registered_technique_has_an_example():
    missing = set(slimkit.techniques()) - set(EXAMPLES)
    assert not missing, f"add an example to tests/test_technique_matrix.py for {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(slimkit.techniques()))
def test_apply_save_restore(name, tmp_path):
    build, options, forward = EXAMPLES[name]
    model = slimkit.apply(build(0), name, **options)
    assert model.slimkit_configs[-1].technique == name
    with torch.no_grad():
        y = forward(model)
    assert torch.isfinite(y).all()
    slimkit.save_pretrained(model, tmp_path)
    restored = slimkit.from_pretrained(build(1), tmp_path)  # different initial weights
    assert [c.to_dict() for c in restored.slimkit_configs] == [c.to_dict() for c in model.slimkit_configs]
    with torch.no_grad():
        y2 = forward(restored)
    torch.testing.assert_close(y2, y, rtol=0, atol=1e-6)
