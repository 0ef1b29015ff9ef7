"""hat-fairseq / hat-predictor: fixture checkpoints with HAT's key names, shapes and argument fields (written
here from the published layout of mit-han-lab/hardware-aware-transformers: a fairseq ``transformersuper``
state dict at SuperTransformer size, its ``argparse.Namespace``, optimizer state and fairseq meters; the
predictor's ``first_layer`` / ``layers.N`` / ``predict`` MLP), converted, and checked against a plain-torch
re-statement of the original post-LN fairseq forward (time-major, ``in_proj_weight`` row blocks, front
slices, sinusoidal positions numbered from pad + 1, arbitrary encoder-decoder attention over the last
1-3 encoder layers); the HAT layout options of slimkit's model on their own; refusals."""
from __future__ import annotations

import argparse
import collections
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

import slimkit
from slimkit.convert import ConversionError, load_converted
from slimkit.errors import ConfigError
from slimkit_nlp.hat.modeling import HatModelConfig, build_model
from slimkit_nlp.hat.space import SubConfig

PAD, EOS = 1, 2
SUPER = dict(vocab=24, enc_dim=16, dec_dim=16, enc_layers=3, dec_layers=3, enc_ffn=32, dec_ffn=32, qkv=8, heads=4)
#: a SubTransformer as HAT's evo_search writes it (spans -1 / 1 / 2 = the last 1 / 2 / 3 encoder layers)
SUB = {"encoder-embed-dim-subtransformer": 12, "decoder-embed-dim-subtransformer": 16,
       "encoder-ffn-embed-dim-all-subtransformer": [32, 16, 24], "decoder-ffn-embed-dim-all-subtransformer": [24, 32],
       "encoder-layer-num-subtransformer": 3, "decoder-layer-num-subtransformer": 2,
       "encoder-self-attention-heads-all-subtransformer": [2, 4, 4],
       "decoder-self-attention-heads-all-subtransformer": [4, 2],
       "decoder-ende-attention-heads-all-subtransformer": [2, 4],
       "decoder-arbitrary-ende-attn-all-subtransformer": [2, 1]}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


# -- HAT's published layout ---------------------------------------------------------------------------
def hat_shapes(a: dict, share_all: bool = True, share_output: bool = True) -> dict:
    """fairseq ``transformersuper`` state-dict keys -> shapes (SuperTransformer size)."""
    qkv = a["qkv"]
    s = {"encoder.version": (1,), "encoder.embed_tokens.weight": (a["vocab"], a["enc_dim"]),
         "encoder.embed_positions._float_tensor": (1,), "decoder.version": (1,),
         "decoder.embed_positions._float_tensor": (1,)}
    if not share_all:
        s["decoder.embed_tokens.weight"] = (a["vocab"], a["dec_dim"])
    if not share_output:
        s["decoder.embed_out"] = (a["vocab"], a["dec_dim"])

    def attention(p, d_q, d_kv):
        if d_q == d_kv:
            s[f"{p}.in_proj_weight"] = (3 * qkv, d_q)
        else:
            s.update({f"{p}.q_proj_weight": (qkv, d_q), f"{p}.k_proj_weight": (qkv, d_kv),
                      f"{p}.v_proj_weight": (qkv, d_kv)})
        s.update({f"{p}.in_proj_bias": (3 * qkv,), f"{p}.out_proj.weight": (d_q, qkv), f"{p}.out_proj.bias": (d_q,)})

    for stack, d, n, ffn in (("encoder", a["enc_dim"], a["enc_layers"], a["enc_ffn"]),
                             ("decoder", a["dec_dim"], a["dec_layers"], a["dec_ffn"])):
        for i in range(n):
            p = f"{stack}.layers.{i}"
            attention(f"{p}.self_attn", d, d)
            norms = ["self_attn_layer_norm", "final_layer_norm"]
            if stack == "decoder":
                attention(f"{p}.encoder_attn", d, a["enc_dim"])
                norms.append("encoder_attn_layer_norm")
            for norm in norms:
                s.update({f"{p}.{norm}.weight": (d,), f"{p}.{norm}.bias": (d,)})
            s.update({f"{p}.fc1.weight": (ffn, d), f"{p}.fc1.bias": (ffn,), f"{p}.fc2.weight": (d, ffn),
                      f"{p}.fc2.bias": (d,)})
    return s


def hat_state_dict(a: dict, share_all: bool = True, share_output: bool = True, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in hat_shapes(a, share_all, share_output).items():
        if k.endswith("version"):
            sd[k] = torch.tensor([3.0])
        elif k.endswith("_float_tensor"):
            sd[k] = torch.zeros(1)
        elif "layer_norm" in k:
            sd[k] = (1.0 if k.endswith("weight") else 0.0) + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            sd[k] = 0.1 * torch.randn(shape, generator=g)
        else:
            sd[k] = torch.randn(shape, generator=g) / math.sqrt(shape[1])
    if share_all:
        sd["decoder.embed_tokens.weight"] = sd["encoder.embed_tokens.weight"]   # one tensor, two keys
    return sd


def hat_args(a: dict, sub: dict | None = None, share_all: bool = True, share_output: bool = True,
             **extra) -> argparse.Namespace:
    """The options ``train.py`` pickles (``transformersuper_wmt_en_de`` defaults, HAT's space fields)."""
    fields = dict(arch="transformersuper_wmt_en_de", task="translation", data="data/binary/wmt16_en_de",
                  share_all_embeddings=share_all, share_decoder_input_output_embed=share_all or share_output,
                  encoder_embed_dim=a["enc_dim"], decoder_embed_dim=a["dec_dim"], encoder_ffn_embed_dim=a["enc_ffn"],
                  decoder_ffn_embed_dim=a["dec_ffn"], encoder_layers=a["enc_layers"], decoder_layers=a["dec_layers"],
                  encoder_attention_heads=a["heads"], decoder_attention_heads=a["heads"], qkv_dim=a["qkv"],
                  encoder_normalize_before=False, decoder_normalize_before=False, encoder_learned_pos=False,
                  decoder_learned_pos=False, no_token_positional_embeddings=False, activation_fn="relu",
                  dropout=0.3, attention_dropout=0.1, activation_dropout=0.0, max_source_positions=1024,
                  max_target_positions=1024, adaptive_softmax_cutoff=None, decoder_output_dim=a["dec_dim"],
                  decoder_input_dim=a["dec_dim"], vocab_original_scaling=False, encoder_embed_choice=[16, 12],
                  decoder_embed_choice=[16, 12], decoder_arbitrary_ende_attn_choice=[-1, 1, 2],
                  optimizer="adam", adam_betas="(0.9, 0.98)", lr=[1e-7], fp16=True,
                  train_subtransformer=sub is not None)
    for key, value in (sub or {}).items():
        fields[key.replace("-", "_")] = value
    fields.update(extra)
    return argparse.Namespace(**fields)


@pytest.fixture
def fairseq_meters(monkeypatch):
    """Classes that pickle as fairseq's ``fairseq.meters.AverageMeter`` / ``TimeMeter`` (as in a real file)."""
    meters = types.ModuleType("fairseq.meters")
    for name in ("AverageMeter", "TimeMeter"):
        cls = type(name, (), {"__module__": "fairseq.meters"})
        setattr(meters, name, cls)
    package = types.ModuleType("fairseq")
    package.meters = meters
    monkeypatch.setitem(sys.modules, "fairseq", package)
    monkeypatch.setitem(sys.modules, "fairseq.meters", meters)
    return meters


def save_hat_checkpoint(path, sd: dict, args: argparse.Namespace, meters=None) -> None:
    """``{"args", "model", "optimizer_history", "extra_state", "last_optimizer_state"}`` as ``save_state`` writes."""
    first = next(v for k, v in sd.items() if k.endswith("weight"))
    extra = {"train_iterator": {"epoch": 12, "iterations_in_epoch": 0}, "val_loss": 4.2, "best": 4.1}
    if meters is not None:
        loss, wps = meters.AverageMeter(), meters.TimeMeter()
        loss.__dict__.update(val=4.3, avg=4.4, sum=44.0, count=10)
        wps.__dict__.update(init=0, start=1.5e9, n=1000)
        extra["train_meters"] = collections.OrderedDict(train_loss=loss, wps=wps)
    torch.save({"args": args, "model": sd, "extra_state": extra,
                "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion",
                                       "optimizer_name": "FairseqAdam", "lr_scheduler_state": {"best": 4.1},
                                       "num_updates": 40000}],
                "last_optimizer_state": {"state": {0: {"step": 40000, "exp_avg": torch.zeros_like(first),
                                                       "exp_avg_sq": torch.zeros_like(first)}},
                                         "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.98), "params": [0]}],
                                         "loss_scale": 8.0}}, path)


# -- the original forward, re-stated in plain torch ----------------------------------------------------------
def fairseq_sinusoids(rows: int, width: int) -> torch.Tensor:
    """fairseq's table: row p = [sin(p * w_0..w_{h-1}), cos(p * w_0..w_{h-1})], w_i = 10000^(-i / (h - 1)), row pad = 0."""
    h = width // 2
    rates = torch.exp(-math.log(10000) / (h - 1) * torch.arange(h, dtype=torch.float))
    angle = torch.arange(rows, dtype=torch.float)[:, None] * rates[None, :]
    table = torch.cat([angle.sin(), angle.cos()], dim=1)
    table[PAD] = 0.0
    return table


def fairseq_positions(tokens: torch.Tensor) -> torch.Tensor:
    real = tokens.ne(PAD).long()
    return real.cumsum(1) * real + PAD


def mha(x, memory, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, heads, key_padding=None, causal=False):
    """fairseq's MultiheadAttention on time-major [T, B, C] inputs (q scaled before the dot product)."""
    tq, b, _ = x.shape
    tk = memory.shape[0]
    width = w_q.shape[0]
    hd = width // heads
    q = (F.linear(x, w_q, b_q) * hd ** -0.5).reshape(tq, b * heads, hd).transpose(0, 1)
    k = F.linear(memory, w_k, b_k).reshape(tk, b * heads, hd).transpose(0, 1)
    v = F.linear(memory, w_v, b_v).reshape(tk, b * heads, hd).transpose(0, 1)
    scores = q @ k.transpose(1, 2)
    if causal:
        scores = scores + torch.triu(torch.full((tq, tk), float("-inf")), 1)
    if key_padding is not None:
        scores = scores.view(b, heads, tq, tk).masked_fill(key_padding[:, None, None, :], float("-inf"))
        scores = scores.view(b * heads, tq, tk)
    out = (scores.softmax(-1) @ v).transpose(0, 1).reshape(tq, b, width)
    return F.linear(out, w_o, b_o)


def sliced_attention(sd, p, d_q, d_kv, qkv, heads):
    """HAT's ``MultiheadAttentionSuper`` weights for one sampled config, as a kwargs dict for ``mha``."""
    if f"{p}.in_proj_weight" in sd:
        w = sd[f"{p}.in_proj_weight"]
        ws = [w[:qkv, :d_q], w[qkv:2 * qkv, :d_kv], w[2 * qkv:, :d_kv]]
    else:
        ws = [sd[f"{p}.q_proj_weight"][:, :d_q], sd[f"{p}.k_proj_weight"][:, :d_kv], sd[f"{p}.v_proj_weight"][:, :d_kv]]
    bias = sd[f"{p}.in_proj_bias"]
    return dict(w_q=ws[0], b_q=bias[:qkv], w_k=ws[1], b_k=bias[qkv:2 * qkv], w_v=ws[2], b_v=bias[2 * qkv:],
                w_o=sd[f"{p}.out_proj.weight"][:d_q, :qkv], b_o=sd[f"{p}.out_proj.bias"][:d_q], heads=heads)


def post_ln(sd, p, x, d):
    return F.layer_norm(x, (d,), sd[f"{p}.weight"][:d], sd[f"{p}.bias"][:d], 1e-5)


def ffn(sd, p, x, d, hidden):
    h = F.relu(F.linear(x, sd[f"{p}.fc1.weight"][:hidden, :d], sd[f"{p}.fc1.bias"][:hidden]))
    return F.linear(h, sd[f"{p}.fc2.weight"][:d, :hidden], sd[f"{p}.fc2.bias"][:d])


def reference_encoder(sd, a, sub, src):
    """All SuperTransformer layer outputs [T, B, C] (layers past the SubTransformer pass x through)."""
    d = sub["encoder-embed-dim-subtransformer"]
    table = fairseq_sinusoids(src.shape[1] + PAD + 1, a["enc_dim"])
    x = math.sqrt(d) * F.embedding(src, sd["encoder.embed_tokens.weight"][:, :d])
    x = (x + table[fairseq_positions(src)][..., :d]).transpose(0, 1)
    pad = src.eq(PAD) if bool(src.eq(PAD).any()) else None
    outs = []
    for i in range(a["enc_layers"]):
        if i < sub["encoder-layer-num-subtransformer"]:
            p = f"encoder.layers.{i}"
            heads = sub["encoder-self-attention-heads-all-subtransformer"][i]
            att = sliced_attention(sd, f"{p}.self_attn", d, d, a["qkv"], heads)
            x = post_ln(sd, f"{p}.self_attn_layer_norm", x + mha(x, x, key_padding=pad, **att), d)
            hidden = sub["encoder-ffn-embed-dim-all-subtransformer"][i]
            x = post_ln(sd, f"{p}.final_layer_norm", x + ffn(sd, p, x, d, hidden), d)
        outs.append(x)
    return outs, pad


def reference_forward(sd, a, sub, src, prev):
    """HAT's ``TransformerSuperModel`` in eval mode for the sampled ``sub``: logits [B, T_dec, vocab]."""
    outs, pad = reference_encoder(sd, a, sub, src)
    d, e = sub["decoder-embed-dim-subtransformer"], sub["encoder-embed-dim-subtransformer"]
    table = fairseq_sinusoids(prev.shape[1] + PAD + 1, a["dec_dim"])
    x = math.sqrt(d) * F.embedding(prev, sd["decoder.embed_tokens.weight"][:, :d])
    x = (x + table[fairseq_positions(prev)][..., :d]).transpose(0, 1)
    for i in range(sub["decoder-layer-num-subtransformer"]):
        p = f"decoder.layers.{i}"
        n = {-1: 1, 1: 2, 2: 3}[sub["decoder-arbitrary-ende-attn-all-subtransformer"][i]]
        memory = torch.cat([outs[-1 - j] for j in range(n)], dim=0)            # last, second last, ...
        memory_pad = torch.cat([pad] * n, dim=1) if pad is not None else None
        self_att = sliced_attention(sd, f"{p}.self_attn", d, d, a["qkv"],
                                    sub["decoder-self-attention-heads-all-subtransformer"][i])
        x = post_ln(sd, f"{p}.self_attn_layer_norm", x + mha(x, x, causal=True, **self_att), d)
        cross = sliced_attention(sd, f"{p}.encoder_attn", d, e, a["qkv"],
                                 sub["decoder-ende-attention-heads-all-subtransformer"][i])
        x = post_ln(sd, f"{p}.encoder_attn_layer_norm", x + mha(x, memory, key_padding=memory_pad, **cross), d)
        hidden = sub["decoder-ffn-embed-dim-all-subtransformer"][i]
        x = post_ln(sd, f"{p}.final_layer_norm", x + ffn(sd, p, x, d, hidden), d)
    out = sd.get("decoder.embed_out", sd["decoder.embed_tokens.weight"])[:, :d]
    return F.linear(x.transpose(0, 1), out)


def largest(a: dict) -> dict:
    return {"encoder-embed-dim-subtransformer": a["enc_dim"], "decoder-embed-dim-subtransformer": a["dec_dim"],
            "encoder-ffn-embed-dim-all-subtransformer": [a["enc_ffn"]] * a["enc_layers"],
            "decoder-ffn-embed-dim-all-subtransformer": [a["dec_ffn"]] * a["dec_layers"],
            "encoder-layer-num-subtransformer": a["enc_layers"], "decoder-layer-num-subtransformer": a["dec_layers"],
            "encoder-self-attention-heads-all-subtransformer": [a["heads"]] * a["enc_layers"],
            "decoder-self-attention-heads-all-subtransformer": [a["heads"]] * a["dec_layers"],
            "decoder-ende-attention-heads-all-subtransformer": [a["heads"]] * a["dec_layers"],
            "decoder-arbitrary-ende-attn-all-subtransformer": [-1] * a["dec_layers"]}


def batch(vocab: int, seed: int = 1):
    """Left-padded sources (fairseq's default) and decoder inputs starting with eos."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (2, 7), generator=g)
    src[1, :3] = PAD
    prev = torch.randint(4, vocab, (2, 5), generator=g)
    prev[:, 0] = EOS
    return src, prev


def converted_logits(model, src, prev):
    with torch.no_grad():
        return model(input_ids=src, attention_mask=src.ne(PAD).long(), decoder_input_ids=prev).logits


# -- hat-fairseq ------------------------------------------------------------------------------------------
def test_subtransformer_checkpoint_maps_every_tensor_and_matches_the_original_forward(tmp_path, fairseq_meters,
                                                                                     monkeypatch):
    sd = hat_state_dict(SUPER)
    path = tmp_path / "HAT_wmt14ende_raspberrypi@3.5s_bleu@25.8.pt"
    save_hat_checkpoint(path, sd, hat_args(SUPER, SUB), fairseq_meters)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **kw: loads.append(kw.get("weights_only")) or real_load(f, *a, **kw))
    report = slimkit.convert("hat-fairseq", path, tmp_path / "out", quiet=True)
    monkeypatch.setattr(torch, "load", real_load)
    assert loads == [True]                                  # the arguments come from the one weights-only read
    model = load_converted(tmp_path / "out").eval()
    used = {k for k in sd if not k.startswith("decoder.layers.2.") and "version" not in k
            and "_float_tensor" not in k}
    assert set(report.mapped) == {f"model.{k}" for k in used}
    assert sum(len(t) for t in report.mapped.values()) == len(model.state_dict()) + 1   # shared table: 2 keys
    assert report.mapped_targets == len(model.state_dict())                            # ... counted once
    assert not report.initialised
    assert set(report.unused) == {f"model.{k}" for k in sd if f"model.{k}" not in report.mapped} | {
        "last_optimizer_state.state.0.exp_avg", "last_optimizer_state.state.0.exp_avg_sq"}
    assert "beyond the SubTransformer's 2 decoder layers" in report.unused["model.decoder.layers.2.fc1.weight"]
    assert report.transformed["encoder.layers.0.self_attn.k_proj.weight"] == "slice [8:16, 0:12] of (24, 16)"
    assert report.transformed["encoder.embed_tokens.weight"].endswith("(one tensor with model.decoder.embed_tokens.weight)")
    assert model.config.ende_spans == [3, 2] and model.config.dropout == pytest.approx(0.3)
    src, prev = batch(SUPER["vocab"])
    with torch.no_grad():
        ref = reference_forward(sd, SUPER, SUB, src, prev)
    assert rel_err(converted_logits(model, src, prev), ref) <= 1e-5
    # generate() (KV caches, positions counted per step) equals greedy decoding with the original forward
    out = model.generate(input_ids=src, attention_mask=src.ne(PAD).long(), max_new_tokens=4, do_sample=False,
                         eos_token_id=None)
    seq = torch.full((2, 1), EOS)
    with torch.no_grad():
        for _ in range(4):
            seq = torch.cat([seq, reference_forward(sd, SUPER, SUB, src, seq)[:, -1:].argmax(-1)], 1)
    assert out.tolist() == seq.tolist()
    beams = model.generate(input_ids=src, attention_mask=src.ne(PAD).long(), num_beams=3, num_return_sequences=2,
                           max_new_tokens=4, eos_token_id=None)   # beams expand the kept encoder outputs too
    assert beams.shape == (4, 5) and bool((beams[:, 0] == EOS).all())


def test_super_checkpoint_converts_its_largest_subtransformer_or_the_yml_one(tmp_path):
    sd = hat_state_dict(SUPER, seed=2)
    path = tmp_path / "HAT_wmt14ende_super_space0.pt"
    save_hat_checkpoint(path, sd, hat_args(SUPER))
    report = slimkit.convert("hat-fairseq", path, tmp_path / "big", quiet=True)
    cut = {k for k, how in report.transformed.items() if "one tensor with" not in how}
    assert all(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "_proj.bias")) for k in cut), cut
    assert "the largest SubTransformer" in report.details["subtransformer_from"]
    src, prev = batch(SUPER["vocab"], seed=3)
    big = load_converted(tmp_path / "big").eval()
    with torch.no_grad():
        assert rel_err(converted_logits(big, src, prev), reference_forward(sd, SUPER, largest(SUPER), src, prev)) <= 1e-5
    # HAT's SubTransformer .yml with 2 of 3 encoder layers: span 2 repeats the last output (exactly span 1)
    sub = dict(SUB, **{"encoder-layer-num-subtransformer": 2, "decoder-arbitrary-ende-attn-all-subtransformer": [1, -1]})
    yml = tmp_path / "HAT_sub.yml"
    yml.write_text("".join(f"{k}: {v}\n" for k, v in sub.items()))
    report = slimkit.convert("hat-fairseq", path, tmp_path / "sub", quiet=True, subtransformer=str(yml))
    model = load_converted(tmp_path / "sub").eval()
    assert model.config.ende_spans == [1, 1] and any("attends exactly like span 1" in n for n in report.notes)
    assert "encoder layer 2 is beyond" in report.unused["model.encoder.layers.2.fc1.weight"]
    with torch.no_grad():
        assert rel_err(converted_logits(model, src, prev), reference_forward(sd, SUPER, sub, src, prev)) <= 1e-5
    uneven = dict(sub, **{"decoder-arbitrary-ende-attn-all-subtransformer": [2, -1]})
    with pytest.raises(ConversionError, match="repeats some layers unevenly"):
        slimkit.convert("hat-fairseq", path, tmp_path / "x", quiet=True, subtransformer=uneven)


def test_separate_embeddings_output_projection_and_kv_widths(tmp_path):
    """No --share-all-embeddings, an untied output (decoder.embed_out), encoder and decoder of other widths
    (encoder_attn with separate q/k/v weights)."""
    arch = dict(SUPER, enc_dim=20, dec_dim=16)
    sd = hat_state_dict(arch, share_all=False, share_output=False, seed=4)
    assert "decoder.layers.0.encoder_attn.k_proj_weight" in sd
    sub = dict(SUB, **{"encoder-embed-dim-subtransformer": 20, "decoder-embed-dim-subtransformer": 12})
    path = tmp_path / "separate.pt"
    save_hat_checkpoint(path, sd, hat_args(arch, sub, share_all=False, share_output=False))
    report = slimkit.convert("hat-fairseq", path, tmp_path / "out", quiet=True)
    assert report.mapped["model.decoder.embed_out"] == ["decoder.output_projection.weight"]
    model = load_converted(tmp_path / "out").eval()
    src, prev = batch(arch["vocab"], seed=5)
    with torch.no_grad():
        ref = reference_forward(sd, arch, sub, src, prev)
    assert rel_err(converted_logits(model, src, prev), ref) <= 1e-5


def test_bad_checkpoints_are_refused_with_one_clear_sentence(tmp_path):
    sd = hat_state_dict(SUPER)
    args = hat_args(SUPER, SUB)
    missing = {k: v for k, v in sd.items() if k != "decoder.layers.1.fc1.weight"}
    save_hat_checkpoint(tmp_path / "missing.pt", missing, args)
    with pytest.raises(ConversionError, match=r"lacks 'model\.decoder\.layers\.1\.fc1\.weight'"):
        slimkit.convert("hat-fairseq", tmp_path / "missing.pt", tmp_path / "a", quiet=True)
    save_hat_checkpoint(tmp_path / "extra.pt", dict(sd, **{"decoder.layers.0.adapter.weight": torch.zeros(2)}), args)
    with pytest.raises(ConversionError, match=r"does not use \('model\.decoder\.layers\.0\.adapter\.weight'\)"):
        slimkit.convert("hat-fairseq", tmp_path / "extra.pt", tmp_path / "b", quiet=True)
    torch.save({"args": args, "model": sd, "hook": ConfigError("runs code")}, tmp_path / "code.pt")
    with pytest.raises(ConversionError, match="needs arbitrary code to load .*ConfigError"):
        slimkit.convert("hat-fairseq", tmp_path / "code.pt", tmp_path / "c", quiet=True)
    save_hat_checkpoint(tmp_path / "lite.pt", sd, hat_args(SUPER, arch="transformer_multibranch_v2_wmt_en_de"))
    with pytest.raises(ConversionError, match="kind 'lite-transformer-fairseq'"):
        slimkit.convert("hat-fairseq", tmp_path / "lite.pt", tmp_path / "d", quiet=True)
    save_hat_checkpoint(tmp_path / "preln.pt", sd, hat_args(SUPER, encoder_normalize_before=True))
    with pytest.raises(ConversionError, match="--encoder-normalize-before"):
        slimkit.convert("hat-fairseq", tmp_path / "preln.pt", tmp_path / "e", quiet=True)
    with pytest.raises(ConfigError, match="decoder_ffn_dims 64 does not fit"):
        slimkit.convert("hat-fairseq", tmp_path / "missing.pt", tmp_path / "f", quiet=True,
                        subtransformer=dict(SUB, **{"decoder-ffn-embed-dim-all-subtransformer": [64, 32]}))
    with pytest.raises(ConfigError, match="lacks 'decoder_layer_num_subtransformer'"):
        slimkit.convert("hat-fairseq", tmp_path / "missing.pt", tmp_path / "g", quiet=True,
                        subtransformer={k: v for k, v in SUB.items() if "decoder-layer-num" not in k})
    assert not any((tmp_path / x).exists() for x in "abcdefg")


# -- the layout options on their own -------------------------------------------------------------------------
@pytest.mark.parametrize("encdec", [True, False])
def test_hat_layout_options_alone_keep_caches_generate_and_save(tmp_path, encdec):
    enc = dict(encoder_embed_dim=12, encoder_layers=2, encoder_ffn_dims=[16, 24], encoder_heads=[2, 4],
               ende_heads=[4, 2], ende_spans=[1, 2], share_all_embeddings=True) if encdec else {}
    cfg = HatModelConfig(vocab_size=30, qkv_dim=8, decoder_embed_dim=16, decoder_layers=2, decoder_ffn_dims=[16, 8],
                         decoder_heads=[2, 2], normalize_before=False, position_embedding="sinusoidal",
                         decoder_position_width=20, scale_embedding=True, share_decoder_input_output_embed=encdec,
                         pad_token_id=PAD, bos_token_id=0, eos_token_id=EOS, decoder_start_token_id=EOS, **enc)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    keys = set(model.state_dict())
    assert not any("embed_positions" in k or k.endswith(("encoder.layer_norm.weight", "decoder.layer_norm.weight"))
                   for k in keys)
    assert ("decoder.embed_tokens.weight" in keys) != encdec and ("decoder.output_projection.weight" in keys) != encdec
    ids = torch.randint(3, 30, (2, 6))
    with torch.no_grad():
        if encdec:       # incremental decoding with the KV caches equals the full forward
            full = model(input_ids=ids, decoder_input_ids=ids).logits
            states, cache = model.encode(ids), EncoderDecoderCache(DynamicCache(), DynamicCache())
            steps = [model.decoder(ids[:, i:i + 1], None, states, None, cache) for i in range(6)]
        else:
            full, cache = model(input_ids=ids).logits, DynamicCache()
            steps = [model.decoder(ids[:, i:i + 1], None, cache=cache) for i in range(6)]
    assert rel_err(torch.cat(steps, 1), full) <= 1e-5
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    prompt = {"input_ids": ids} if encdec else {"input_ids": ids[:, :3]}
    a = model.generate(**prompt, max_new_tokens=4, do_sample=False, eos_token_id=None)
    b = back.generate(**prompt, max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert a.tolist() == b.tolist() and a.shape[1] == (5 if encdec else 7)
    if not encdec:   # generate's cached steps give the tokens a full forward would pick
        with torch.no_grad():
            assert model(input_ids=a[:, :-1]).logits[:, -1].argmax(-1).tolist() == a[:, -1].tolist()


def test_default_layout_is_unchanged():
    cfg = HatModelConfig(vocab_size=30, qkv_dim=8, decoder_embed_dim=16, decoder_layers=1, decoder_heads=[2])
    assert (cfg.normalize_before, cfg.position_embedding, cfg.scale_embedding, cfg.share_all_embeddings,
            cfg.share_decoder_input_output_embed) == (True, "learned", False, False, True)
    keys = set(build_model(cfg).state_dict())
    assert {"decoder.embed_positions.weight", "decoder.layer_norm.weight"} <= keys
    assert "decoder.output_projection.weight" not in keys
    with pytest.raises(ValueError, match="share_all_embeddings=True needs an encoder"):
        HatModelConfig(vocab_size=30, qkv_dim=8, decoder_embed_dim=16, decoder_layers=1, share_all_embeddings=True)
    with pytest.raises(ValueError, match="position_embedding='rotary' is not one of"):
        HatModelConfig(vocab_size=30, qkv_dim=8, position_embedding="rotary")


# -- hat-predictor -----------------------------------------------------------------------------------------
def hat_predictor_state(hidden: int = 24, layers: int = 3, seed: int = 0) -> dict:
    """``latency_predictor.Net``'s state dict: first_layer (10 -> hidden), layers.N, predict (hidden -> 1)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"first_layer": (hidden, 10), **{f"layers.{i}": (hidden, hidden) for i in range(layers)},
              "predict": (1, hidden)}
    sd = collections.OrderedDict()
    for name, (o, i) in shapes.items():
        sd[f"{name}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
        sd[f"{name}.bias"] = 0.1 * torch.randn(o, generator=g)
    return sd


def hat_predict(sd: dict, features: list[float], norm: list[float], lat_norm: float) -> float:
    """HAT's ``predict_lat``: features / feature_norm -> ReLU MLP -> x lat_norm."""
    x = torch.tensor(features) / torch.tensor(norm)
    x = F.relu(F.linear(x, sd["first_layer.weight"], sd["first_layer.bias"]))
    i = 0
    while f"layers.{i}.weight" in sd:
        x = F.relu(F.linear(x, sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"]))
        i += 1
    return float(F.linear(x, sd["predict.weight"], sd["predict.bias"])[0]) * lat_norm


def test_hat_predictor_sets_hats_normalisation(tmp_path):
    sd = hat_predictor_state()
    torch.save(sd, tmp_path / "wmt14ende_cpu_xeon.pt")
    report = slimkit.convert("hat-predictor", tmp_path / "wmt14ende_cpu_xeon.pt", tmp_path / "out", quiet=True)
    assert set(report.mapped) == set(sd) and not report.unused
    assert set(report.initialised) == {"feature_scale", "latency_scale"}
    pred = load_converted(tmp_path / "out")
    assert pred.y_mean == 300.0 and pred.scale == [640, 6, 2048, 6, 640, 6, 2048, 6, 6, 2]
    sub = SubConfig(encoder_embed_dim=512, encoder_layers=6, encoder_ffn_dims=[3072, 3072, 2048, 1024, 3072, 2048],
                    encoder_heads=[8, 4, 8, 8, 4, 8], decoder_embed_dim=640, decoder_layers=3,
                    decoder_ffn_dims=[3072, 1024, 2048], decoder_heads=[8, 4, 4], ende_heads=[4, 8, 8],
                    ende_spans=[1, 3, 2])   # HAT's arbitrary-ende-attn -1, 2, 1
    pred.space.check(sub)
    expected = hat_predict(sd, sub.features(), pred.scale, 300.0)
    assert pred.predict(sub) == pytest.approx(expected, rel=1e-6)
    # the predictor's .yml gives the constants for a file of another name; the IWSLT space by option
    yml = tmp_path / "gpu_titanxp.yml"
    yml.write_text("lat-norm: 200\nfeature-norm: [640, 6, 2048, 6, 640, 6, 2048, 6, 6, 2]\nhidden-dim: 24\n")
    torch.save(sd, tmp_path / "mine.pt")
    slimkit.convert("hat-predictor", tmp_path / "mine.pt", tmp_path / "yml", quiet=True, config=str(yml),
                    space="iwslt")
    other = load_converted(tmp_path / "yml")
    assert other.y_mean == 200.0 and other.space.encoder_head_choices == [2, 4]
    with pytest.raises(ConfigError, match="latency normalisation is unknown; pass config="):
        slimkit.convert("hat-predictor", tmp_path / "mine.pt", tmp_path / "z", quiet=True)
    torch.save({k: v for k, v in sd.items() if k != "predict.bias"}, tmp_path / "wmt14ende_gpu_titanxp.pt")
    with pytest.raises(ConversionError, match="lacks 'predict.bias'"):
        slimkit.convert("hat-predictor", tmp_path / "wmt14ende_gpu_titanxp.pt", tmp_path / "w", quiet=True)
