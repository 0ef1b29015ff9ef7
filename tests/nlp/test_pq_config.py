"""progressive-quant: config validation, round trips, registration and unsupported models."""
import pytest
import torch
from torch import nn

import slimkit
from slimkit import ConfigError, UnsupportedModelError
from slimkit_nlp.pq import ProgressiveQuantConfig


@pytest.mark.parametrize("options,needle", [
    (dict(msb_bits=0), "msb_bits"), (dict(msb_bits=17), "msb_bits"), (dict(lsb_bits=-1), "lsb_bits"),
    (dict(msb_bits=10, lsb_bits=8), "msb_bits + lsb_bits"), (dict(threshold=-0.1), "threshold"),
    (dict(threshold=1.5), "threshold"), (dict(value_bits=0), "value_bits"), (dict(value_bits=20), "value_bits"),
    (dict(msb_bits=6.5), "msb_bits"),
])
def test_bad_configs_raise_one_clear_error(options, needle):
    with pytest.raises(ConfigError) as e:
        slimkit.make_config("progressive-quant", **options)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_limits_are_accepted():
    slimkit.make_config("progressive-quant", msb_bits=12, lsb_bits=4, threshold=1.0, layout="token")
    slimkit.make_config("progressive-quant", msb_bits=8, lsb_bits=0, threshold=0.0, value_bits=16, layout="token")


def test_config_round_trip(tmp_path):
    cfg = slimkit.make_config("progressive-quant", msb_bits=8, lsb_bits=4, threshold=0.05, value_bits=6, layout="token")
    assert ProgressiveQuantConfig.from_dict(cfg.to_dict()) == cfg
    cfg.save_pretrained(tmp_path / "c")
    assert slimkit.load_config(tmp_path / "c") == cfg
    assert cfg.to_dict()["type"] == "progressive-quant"


def test_model_round_trip_restores_the_same_outputs(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    def fresh():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()

    m = slimkit.apply(fresh(), "progressive-quant", msb_bits=4, lsb_bits=4, threshold=0.2)
    ids = torch.randint(0, 50, (1, 16))
    with torch.no_grad():
        ref = m(ids).logits
    slimkit.save_pretrained(m, tmp_path / "m")
    back = slimkit.from_pretrained(fresh(), tmp_path / "m")
    assert back.slimkit_configs[-1].msb_bits == 4
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ref)


def test_unsupported_model_lists_families():
    with pytest.raises(UnsupportedModelError) as e:
        slimkit.apply(nn.Linear(3, 3), "progressive-quant")
    assert "gpt2" in str(e.value) and "llama" in str(e.value)


def test_expected_kl_config_checks_and_round_trips():
    with pytest.raises(ConfigError, match="kl_threshold"):
        slimkit.make_config("progressive-quant", criterion="expected_kl", kl_threshold=-1.0)
    cfg = slimkit.make_config("progressive-quant", msb_bits=4, lsb_bits=4, criterion="expected_kl", kl_threshold=0.01)
    again = slimkit.load_config(cfg.to_dict())
    assert again == cfg and again.criterion == "expected_kl"
