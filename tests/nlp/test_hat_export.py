"""Weight slicing and standalone export: slices equal dense models; export save/load/generate."""
import random
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from slimkit.measure import count_params
from slimkit_nlp.hat.export import model_config
from slimkit_nlp.hat.modeling import HatForCausalLM, HatForConditionalGeneration, build_model
from slimkit_nlp.hat.supernet import SuperTransformer

from ._hat_common import tiny_space


def _inputs(space):
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, space.vocab_size, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    tgt = torch.randint(3, space.vocab_size, (2, 6), generator=g)
    return src, mask, tgt


def _slice_run(net, sub, src, mask, tgt):
    return net(sub, src, mask, tgt) if net.space.is_encdec else net(sub, tgt)


def _dense_run(model, src, mask, tgt):
    if model.config.is_encoder_decoder:
        return model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    return model(input_ids=tgt).logits


def _dense_by_hand(net, sub):
    """A dense model filled by explicit front slicing (independent of export.py)."""
    model = build_model(model_config(net.space, sub)).eval()
    full = dict(net.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            w = full[name]
            if p.dim() == 2:
                p.copy_(w[: p.shape[0], : p.shape[1]])
            else:
                p.copy_(w[: p.shape[0]])
    return model


@pytest.mark.parametrize("task", ["encdec", "decoder"])
def test_largest_subtransformer_reproduces_supernet(task):
    space = tiny_space(task)
    net = SuperTransformer(space).eval()
    src, mask, tgt = _inputs(space)
    largest = space.largest()
    dense = _dense_by_hand(net, largest)
    # the largest SubTransformer uses every weight in full
    assert count_params(dense) == count_params(net)
    with torch.no_grad():
        a = _slice_run(net, largest, src, mask, tgt)
        b = _dense_run(dense, src, mask, tgt)
        c = _slice_run(net, None, src, mask, tgt)
    assert torch.equal(a, c)
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("task", ["encdec", "decoder"])
def test_smaller_subtransformer_equals_dense_from_slices(task):
    space = tiny_space(task)
    net = SuperTransformer(space).eval()
    src, mask, tgt = _inputs(space)
    rng = random.Random(0)
    subs = [space.smallest()] + [space.sample(rng) for _ in range(3)]
    for sub in subs:
        dense = _dense_by_hand(net, sub)
        exported = net.export(sub)
        with torch.no_grad():
            a = _slice_run(net, sub, src, mask, tgt)
            assert (a - _dense_run(dense, src, mask, tgt)).abs().max() <= 1e-5
            assert (a - _dense_run(exported, src, mask, tgt)).abs().max() <= 1e-5
        assert count_params(exported) < count_params(net)


def test_gradients_touch_only_the_front_slice():
    space = tiny_space("decoder")
    net = SuperTransformer(space)
    sub = space.smallest()
    _, _, tgt = _inputs(space)
    net(sub, tgt).sum().backward()
    fc1 = net.decoder.layers[0].ffn.fc1.weight.grad
    d, f = sub.decoder_embed_dim, sub.decoder_ffn_dims[0]
    assert fc1[:f, :d].abs().sum() > 0 and fc1[f:].abs().sum() == 0 and fc1[:, d:].abs().sum() == 0
    assert net.decoder.layers[2].ffn.fc1.weight.grad is None  # layers beyond N do not run


@pytest.mark.parametrize("task", ["encdec", "decoder"])
def test_export_save_load_generate(tmp_path, task):
    space = tiny_space(task)
    net = SuperTransformer(space).eval()
    sub = space.sample(random.Random(7))
    model = net.export(sub)
    assert isinstance(model, HatForConditionalGeneration if task == "encdec" else HatForCausalLM)
    # no SuperTransformer code inside the exported model
    assert not any("supernet" in type(m).__module__ for m in model.modules())
    model.save_pretrained(tmp_path)
    auto = AutoModelForSeq2SeqLM if task == "encdec" else AutoModelForCausalLM
    loaded = auto.from_pretrained(tmp_path).eval()
    assert (tmp_path / "modeling.py").exists()  # the folder carries its own modeling code
    src, mask, tgt = _inputs(space)
    with torch.no_grad():
        ref = _slice_run(net, sub, src, mask, tgt)
        assert (ref - _dense_run(loaded, src, mask, tgt)).abs().max() <= 1e-5
        # incremental decoding with the KV cache equals the full forward
        if task == "encdec":
            states = loaded.encode(src[:1])
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            steps = [loaded.decoder(tgt[:1, i:i + 1], None, states, None, cache) for i in range(tgt.shape[1])]
        else:
            cache = DynamicCache()
            steps = [loaded.decoder(tgt[:1, i:i + 1], None, cache=cache) for i in range(tgt.shape[1])]
        assert (torch.cat(steps, 1) - ref[:1]).abs().max() <= 1e-5
        # greedy generate() equals greedy decoding with the weight-shared slice
        n = 5
        if task == "encdec":
            out = loaded.generate(input_ids=src[:1], max_new_tokens=n, do_sample=False, eos_token_id=None)
            dec = torch.full((1, 1), space.bos_token_id)
            for _ in range(n):
                dec = torch.cat([dec, net(sub, src[:1], None, dec)[:, -1:].argmax(-1)], 1)
            assert out[0].tolist() == dec[0].tolist()
        else:
            out = loaded.generate(input_ids=tgt[:1], max_new_tokens=n, do_sample=False, eos_token_id=None)
            ids = tgt[:1]
            for _ in range(n):
                ids = torch.cat([ids, net(sub, ids)[:, -1:].argmax(-1)], 1)
            assert out[0].tolist() == ids[0].tolist()


def test_export_loads_through_the_auto_classes_in_a_fresh_interpreter(tmp_path):
    """A fresh interpreter loads the export with transformers' Auto classes once the HAT model classes
    are registered (``import slimkit_nlp.hat.modeling``: torch and transformers only), without
    ``trust_remote_code``, and matches the SuperTransformer's slice."""
    from safetensors.torch import save_file

    space = tiny_space("encdec")
    net = SuperTransformer(space).eval()
    sub = space.sample(random.Random(3))
    net.export(sub).save_pretrained(tmp_path / "m")
    src, mask, tgt = _inputs(space)
    with torch.no_grad():
        ref = _slice_run(net, sub, src, mask, tgt)
    save_file({"src": src, "mask": mask, "tgt": tgt, "ref": ref}, str(tmp_path / "io.safetensors"))
    code = (
        "import sys, torch\n"
        "from safetensors.torch import load_file\n"
        "from transformers import AutoModelForSeq2SeqLM\n"
        "import slimkit_nlp.hat.modeling\n"
        f"d = load_file({str(tmp_path / 'io.safetensors')!r})\n"
        f"m = AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path / 'm')!r}).eval()\n"
        "with torch.no_grad():\n"
        "    out = m(input_ids=d['src'], attention_mask=d['mask'], decoder_input_ids=d['tgt']).logits\n"
        "print(type(m).__module__, float((out - d['ref']).abs().max()))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    module, diff = res.stdout.split()[-2:]
    assert module == "slimkit_nlp.hat.modeling" and float(diff) <= 1e-5


def test_arbitrary_encoder_decoder_attention_span():
    """Decoder layers attend to the last 1/2/3 encoder layers: the span changes the output."""
    space = tiny_space("encdec", encoder_layer_choices=[3])
    net = SuperTransformer(space).eval()
    src, mask, tgt = _inputs(space)
    sub = space.largest()
    outs = []
    for span in (1, 2, 3):
        sub.ende_spans = [span] * sub.decoder_layers
        with torch.no_grad():
            outs.append(net(sub, src, mask, tgt))
            assert (outs[-1] - _dense_run(net.export(sub), src, mask, tgt)).abs().max() <= 1e-5
        assert len(net.encode(sub, src, mask)) == span
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
