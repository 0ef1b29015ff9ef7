"""lite-transformer-fairseq: fixture checkpoints with the original key names, shapes and argument fields
(written here from the published transformer_multibranch_v2 layout, tiny sizes), converted, and checked
against an independent plain-torch statement of the original layers (post-LN multibranch: attention
branch + conv branch with padding zeroed before its input projection)."""
from __future__ import annotations

import argparse
import collections
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import slimkit
from slimkit.convert import ConversionError, load_converted

PAD, EOS = 1, 2
D = 16            # model width; attention and conv branches 8 channels each


# -- fixture checkpoints ---------------------------------------------------------------------------
def fairseq_args(**kw) -> argparse.Namespace:
    """The options fairseq stores for a Lite Transformer run (after its architecture defaults were applied)."""
    base = dict(arch="transformer_multibranch_v2_wmt_en_de", task="translation", encoder_embed_dim=D,
                decoder_embed_dim=D, encoder_ffn_embed_dim=D, decoder_ffn_embed_dim=D, encoder_layers=2,
                decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=4,
                encoder_branch_type=["attn:1:8:2", "dynamic:default:8:2"],
                decoder_branch_type=["attn:1:8:2", "dynamic:default:8:2"], encoder_kernel_size_list=[3, 5],
                decoder_kernel_size_list=[3, 5], encoder_glu=True, decoder_glu=True, conv_linear=True,
                weight_softmax=True, share_all_embeddings=True, share_decoder_input_output_embed=True,
                encoder_normalize_before=False, decoder_normalize_before=False, encoder_learned_pos=False,
                decoder_learned_pos=False, no_token_positional_embeddings=False, adaptive_softmax_cutoff=None,
                max_source_positions=64, max_target_positions=64, dropout=0.1, attention_dropout=0.08,
                weight_dropout=0.08, activation_fn="relu", activation_dropout=0.0, lr=[0.001], max_update=50000)
    base.update(kw)
    return argparse.Namespace(**base)


def _branch(spec: str) -> tuple[str, int, int]:
    kind, _, dim, heads = spec.split(":")
    return kind, int(dim), int(heads)


def layer_shapes(p: str, args, side: str, i: int, cross: bool) -> dict:
    """Key -> shape of one multibranch layer (TransformerEncoderLayer / TransformerDecoderLayer)."""
    types = getattr(args, f"{side}_branch_type")
    _, a, _ = _branch(types[0])
    kind, c, h = _branch(types[1])
    k = getattr(args, f"{side}_kernel_size_list")[i]
    glu = kind == "dynamic" and getattr(args, f"{side}_glu")
    ffn = getattr(args, f"{side}_ffn_embed_dim")
    s = {}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        s[f"{p}.self_attn.branches.0.{proj}.weight"], s[f"{p}.self_attn.branches.0.{proj}.bias"] = (a, a), (a,)
        if cross:
            s[f"{p}.encoder_attn.{proj}.weight"], s[f"{p}.encoder_attn.{proj}.bias"] = (D, D), (D,)
    conv = f"{p}.self_attn.branches.1"
    if args.conv_linear:
        s[f"{conv}.linear1.weight"], s[f"{conv}.linear1.bias"] = ((2 * c if glu else c), c), ((2 * c if glu else c),)
        s[f"{conv}.linear2.weight"], s[f"{conv}.linear2.bias"] = (c, c), (c,)
    if kind == "dynamic":
        s[f"{conv}.weight_linear.weight"] = (h * k, c)
    else:
        s[f"{conv}.weight"] = (h, 1, k)           # LightweightConv1dTBC
    norms = ["self_attn_layer_norm", "final_layer_norm"] + (["encoder_attn_layer_norm"] if cross else [])
    for n in norms:
        s[f"{p}.{n}.weight"], s[f"{p}.{n}.bias"] = (D,), (D,)
    s[f"{p}.fc1.weight"], s[f"{p}.fc1.bias"] = (ffn, D), (ffn,)
    s[f"{p}.fc2.weight"], s[f"{p}.fc2.bias"] = (D, ffn), (D,)
    return s


def model_shapes(args, vocab: int, src_vocab: int | None = None) -> dict:
    """Key -> shape of the fairseq model's state dict (without the version / _float_tensor markers)."""
    sides = ["decoder"] if args.arch.startswith("transformer_lm") else ["encoder", "decoder"]
    s = {}
    for side in sides:
        s[f"{side}.embed_tokens.weight"] = ((src_vocab or vocab) if side == "encoder" else vocab, D)
        if getattr(args, f"{side}_learned_pos", False):
            s[f"{side}.embed_positions.weight"] = (getattr(args, f"max_{'source' if side == 'encoder' else 'target'}"
                                                           f"_positions") + PAD + 1, D)
        for i in range(getattr(args, f"{side}_layers")):
            s.update(layer_shapes(f"{side}.layers.{i}", args, side, i, cross=side == "decoder" and len(sides) == 2))
        if getattr(args, f"{side}_normalize_before"):
            s[f"{side}.layer_norm.weight"], s[f"{side}.layer_norm.bias"] = (D,), (D,)
    if not args.share_decoder_input_output_embed:
        s["decoder.embed_out"] = (vocab, D)
    return s


def random_weights(shapes: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        if "layer_norm" in k:
            out[k] = (1.0 if k.endswith("weight") else 0.0) + 0.1 * torch.randn(shape, generator=g)
        elif k.endswith("bias"):
            out[k] = 0.2 * torch.randn(shape, generator=g)
        else:
            out[k] = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
        if k.endswith("embed_tokens.weight") or k.endswith("embed_positions.weight"):
            out[k][PAD] = 0.0                     # fairseq's Embedding keeps the padding row at zero
    return out


def fairseq_checkpoint(args, vocab: int = 24, src_vocab: int | None = None, seed: int = 0) -> tuple[dict, dict]:
    """(the file's content, the model's weights without markers) as fairseq's checkpoint_utils saves them."""
    sd = random_weights(model_shapes(args, vocab, src_vocab), seed)
    if args.share_all_embeddings:
        sd["decoder.embed_tokens.weight"] = sd["encoder.embed_tokens.weight"]
    model = dict(sd)
    for side in ("encoder", "decoder"):
        if f"{side}.embed_tokens.weight" in sd:
            model[f"{side}.version"] = torch.tensor([3.0])
            if not getattr(args, f"{side}_learned_pos", False):
                model[f"{side}.embed_positions._float_tensor"] = torch.tensor([1.0])
    ckpt = {"args": args, "model": model,
            "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": 3.9}, "num_updates": 1200}],
            "extra_state": {"train_iterator": {"epoch": 3, "iterations_in_epoch": 0}, "val_loss": 3.9},
            "last_optimizer_state": {"state": {0: {"step": 1200, "exp_avg": torch.zeros(3), "exp_avg_sq": torch.ones(3)}},
                                     "param_groups": [{"lr": 0.001, "betas": (0.9, 0.98), "params": [0]}]}}
    return ckpt, sd


# -- the original forward, restated in plain torch --------------------------------------------------
def ref_positions(tokens: torch.Tensor, dim: int, table=None) -> torch.Tensor:
    """fairseq positions: non-padding tokens numbered from PAD + 1; sinusoidal (sin | cos halves) or a table."""
    keep = tokens.ne(PAD).long()
    pos = torch.cumsum(keep, 1) * keep + PAD
    if table is not None:
        return table[pos]
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(int(pos.max()) + 1, dtype=torch.float)[:, None] * freq[None]
    rows = torch.cat([angles.sin(), angles.cos()], 1)
    rows[PAD] = 0
    return rows[pos]


def ref_attention(x, mem, sd, p, heads, key_pad=None, causal=False):
    B, T, C = x.shape
    hd = C // heads
    q = F.linear(x, sd[f"{p}.q_proj.weight"], sd[f"{p}.q_proj.bias"]) * hd ** -0.5
    k = F.linear(mem, sd[f"{p}.k_proj.weight"], sd[f"{p}.k_proj.bias"])
    v = F.linear(mem, sd[f"{p}.v_proj.weight"], sd[f"{p}.v_proj.bias"])
    q, k, v = (t.reshape(B, -1, heads, hd).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2)
    if causal:
        scores = scores + torch.triu(torch.full((T, T), float("-inf")), 1)
    if key_pad is not None:
        scores = scores.masked_fill(key_pad[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    return F.linear(out, sd[f"{p}.out_proj.weight"], sd[f"{p}.out_proj.bias"])


def ref_conv_branch(x, sd, p, heads, kernel, causal, key_pad=None):
    """MultiBranch's conv branch: padding zeroed on the input, linear1 (+GLU), conv (unfolded), linear2."""
    if key_pad is not None:
        x = x.masked_fill(key_pad[..., None], 0.0)
    x = F.linear(x, sd[f"{p}.linear1.weight"], sd[f"{p}.linear1.bias"])
    if x.shape[-1] == 2 * sd[f"{p}.linear2.weight"].shape[1]:
        x = F.glu(x, dim=-1)
    B, T, C = x.shape
    left = kernel - 1 if causal else kernel // 2
    windows = F.pad(x, (0, 0, left, kernel - 1 - left)).unfold(1, kernel, 1)          # [B, T, C, K]
    if f"{p}.weight_linear.weight" in sd:
        w = F.linear(x, sd[f"{p}.weight_linear.weight"]).view(B, T, heads, kernel).softmax(-1)
    else:
        w = sd[f"{p}.weight"].view(heads, kernel).softmax(-1).expand(B, T, heads, kernel)
    out = (windows * w.repeat_interleave(C // heads, dim=2)).sum(-1)
    return F.linear(out, sd[f"{p}.linear2.weight"], sd[f"{p}.linear2.bias"])


def ref_layer(x, sd, p, args, side, i, key_pad=None, causal=False, memory=None, memory_pad=None):
    _, a, heads = _branch(getattr(args, f"{side}_branch_type")[0])
    _, _, conv_heads = _branch(getattr(args, f"{side}_branch_type")[1])
    kernel = getattr(args, f"{side}_kernel_size_list")[i]
    pre = getattr(args, f"{side}_normalize_before")

    def norm(h, name):
        return F.layer_norm(h, (D,), sd[f"{p}.{name}.weight"], sd[f"{p}.{name}.bias"], 1e-5)

    def block(h, name, fn):
        return h + fn(norm(h, name)) if pre else norm(h + fn(h), name)

    def lsra(h):
        return torch.cat([ref_attention(h[..., :a], h[..., :a], sd, f"{p}.self_attn.branches.0", heads, key_pad, causal),
                          ref_conv_branch(h[..., a:], sd, f"{p}.self_attn.branches.1", conv_heads, kernel, causal,
                                          key_pad)], -1)

    x = block(x, "self_attn_layer_norm", lsra)
    if memory is not None:
        x = block(x, "encoder_attn_layer_norm",
                  lambda h: ref_attention(h, memory, sd, f"{p}.encoder_attn", args.decoder_attention_heads, memory_pad))
    return block(x, "final_layer_norm", lambda h: F.linear(F.relu(F.linear(h, sd[f"{p}.fc1.weight"],
                                                                            sd[f"{p}.fc1.bias"])),
                                                            sd[f"{p}.fc2.weight"], sd[f"{p}.fc2.bias"]))


def ref_stack(tokens, sd, args, side, memory=None, memory_pad=None):
    key_pad = tokens.eq(PAD) if side == "encoder" and tokens.eq(PAD).any() else None
    x = math.sqrt(D) * sd[f"{side}.embed_tokens.weight"][tokens]
    x = x + ref_positions(tokens, D, sd.get(f"{side}.embed_positions.weight"))
    for i in range(getattr(args, f"{side}_layers")):
        x = ref_layer(x, sd, f"{side}.layers.{i}", args, side, i, key_pad, side == "decoder", memory, memory_pad)
    if f"{side}.layer_norm.weight" in sd:
        x = F.layer_norm(x, (D,), sd[f"{side}.layer_norm.weight"], sd[f"{side}.layer_norm.bias"], 1e-5)
    return x, key_pad


def ref_logits(sd, args, tgt, src=None):
    memory, memory_pad = ref_stack(src, sd, args, "encoder") if src is not None else (None, None)
    x, _ = ref_stack(tgt, sd, args, "decoder", memory, memory_pad)
    return F.linear(x, sd.get("decoder.embed_out", sd["decoder.embed_tokens.weight"]))


def close(out, ref) -> float:
    """Max absolute difference relative to the output scale."""
    return ((out - ref).abs().max() / ref.abs().max()).item()


# -- tests -------------------------------------------------------------------------------------------
VARIANTS = {
    # WMT / CNN-DM configs: dynamic conv with GLU, one embedding for encoder, decoder and output
    "wmt-dynamic": ({}, None),
    # IWSLT configs: lightweight conv (no GLU), separate dictionaries, own output matrix; learned positions
    "iwslt-lightweight": (dict(arch="transformer_multibranch_v2_iwslt_de_en", encoder_glu=False, decoder_glu=False,
                               encoder_branch_type=["attn:1:8:2", "lightweight:default:8:2"],
                               decoder_branch_type=["attn:1:8:2", "lightweight:default:8:2"],
                               share_all_embeddings=False, share_decoder_input_output_embed=False,
                               encoder_learned_pos=True, decoder_learned_pos=True), 20),
}
SRC = torch.tensor([[5, 6, 7, 8, 9, 10, EOS], [PAD, PAD, PAD, 11, 12, 13, EOS]])   # fairseq pads sources on the left
TGT = torch.tensor([[EOS, 4, 5, 6, 7], [EOS, 8, 9, 10, 11]])


def _convert(tmp_path, args, src_vocab=None, name="ckpt"):
    ckpt, sd = fairseq_checkpoint(args, src_vocab=src_vocab)
    path = tmp_path / f"{name}.pt"
    torch.save(ckpt, path)
    report = slimkit.convert("lite-transformer-fairseq", path, tmp_path / name, quiet=True)
    model = load_converted(tmp_path / name)
    assert not any(m.training for m in model.modules()), "load_converted gives an eval-mode model"
    return report, model, sd


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_checkpoint_converts_completely_and_matches_the_original_forward(variant, tmp_path):
    options, src_vocab = VARIANTS[variant]
    args = fairseq_args(**options)
    report, model, sd = _convert(tmp_path, args, src_vocab)
    model_keys = {f"model.{k}" for k in sd}
    assert set(report.mapped) == model_keys and not report.initialised
    assert all(k.startswith(("model.", "last_optimizer_state.")) for k in report.unused)
    markers = {k for k in report.unused if k.startswith("model.")}
    assert markers and all(k.endswith(("version", "_float_tensor")) for k in markers)
    assert "training state" in report.unused["last_optimizer_state.state.0.exp_avg"]
    cfg = model.config
    assert (cfg.norm_position, cfg.conv_padding_order, cfg.position_offset) == ("post", "before_projection", PAD + 1)
    assert cfg.final_layer_norm is False and cfg.scale_embedding
    with torch.no_grad():
        out = model(input_ids=SRC, attention_mask=SRC.ne(PAD).long(), decoder_input_ids=TGT, use_cache=False).logits
        ref = ref_logits(sd, args, TGT, SRC)
    assert close(out, ref) <= 1e-5, close(out, ref)


def test_padded_batches_follow_the_original_padding_order(tmp_path):
    """Padding is zeroed on the conv branch input, before linear1 (+GLU), as MultiBranch does. With zero
    linear1 biases a padded sentence then gives the outputs of the sentence alone (positions, attention
    masks and the conv's zero padding agree); with biases the conv reads GLU(bias) next to padding, which
    the converted model reproduces (the default 'after_glu' order would not)."""
    args = fairseq_args()
    ckpt, sd = fairseq_checkpoint(args)
    for k in list(ckpt["model"]):
        if k.endswith("self_attn.branches.1.linear1.bias") and k.startswith("encoder."):
            ckpt["model"][k] = sd[k] = torch.zeros_like(sd[k])
    torch.save(ckpt, tmp_path / "zero_bias.pt")
    slimkit.convert("lite-transformer-fairseq", tmp_path / "zero_bias.pt", tmp_path / "zb", quiet=True)
    model = load_converted(tmp_path / "zb").eval()
    alone = SRC[1:, 3:]
    with torch.no_grad():
        padded = model(input_ids=SRC, attention_mask=SRC.ne(PAD).long(), decoder_input_ids=TGT, use_cache=False)
        single = model(input_ids=alone, decoder_input_ids=TGT[1:], use_cache=False)
    assert close(padded.encoder_last_hidden_state[1:, 3:], single.encoder_last_hidden_state) <= 1e-5
    assert close(padded.logits[1:], single.logits) <= 1e-5

    report, orig, sd = _convert(tmp_path, args, name="biased")          # nonzero linear1 biases
    after_glu = build_with(orig, conv_padding_order="after_glu")
    with torch.no_grad():
        kw = dict(input_ids=SRC, attention_mask=SRC.ne(PAD).long(), decoder_input_ids=TGT, use_cache=False)
        ref = ref_logits(sd, args, TGT, SRC)
        assert close(orig(**kw).logits, ref) <= 1e-5
        assert close(after_glu(**kw).logits[1:], ref[1:]) > 1e-3                 # differs next to padding
        assert close(after_glu(**kw).logits[:1], ref[:1]) <= 1e-5                # the unpadded row agrees


def build_with(model, **changes):
    """The same weights under a changed config."""
    from slimkit_nlp.lsra import LiteTransformerConfig

    other = type(model)(LiteTransformerConfig(**{**model.config.to_dict(), **changes})).eval()
    other.load_state_dict(model.state_dict())
    return other


def _greedy_without_cache(model, src, steps):
    ids = torch.full((src.shape[0], 1), EOS)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=src, attention_mask=src.ne(PAD).long(), decoder_input_ids=ids,
                           use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


def test_generate_with_caches_equals_greedy_decoding_without(tmp_path):
    _, model, _ = _convert(tmp_path, fairseq_args())
    model.generation_config.eos_token_id = None          # run every step (random weights may emit </s> early)
    out = model.generate(SRC, attention_mask=SRC.ne(PAD).long(), max_new_tokens=6, do_sample=False, num_beams=1,
                         min_new_tokens=6)
    assert out[0, 0] == EOS                               # fairseq starts decoding with </s>
    assert torch.equal(out, _greedy_without_cache(model, SRC, 6))


def test_language_model_converts_pre_norm_and_generates(tmp_path):
    args = fairseq_args(arch="transformer_lm_multibranch_v2", task="language_modeling", decoder_normalize_before=True,
                        share_all_embeddings=False, decoder_kernel_size_list=[3, 7], tokens_per_sample=64,
                        max_target_positions=None)
    report, model, sd = _convert(tmp_path, args, name="lm")
    assert type(model).__name__ == "LiteTransformerForCausalLM" and set(report.mapped) == {f"model.{k}" for k in sd}
    assert model.config.norm_position == "pre" and model.config.final_layer_norm
    tokens = torch.tensor([[EOS, 5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        out = model(tokens, use_cache=False).logits
    assert close(out, ref_logits(sd, args, tokens)) <= 1e-5
    gen = model.generate(tokens[:, :3], max_new_tokens=5, min_new_tokens=5, do_sample=False)
    ids = tokens[:, :3]
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(gen, ids)


@pytest.fixture
def fairseq_meters(monkeypatch):
    """Classes that pickle as fairseq's ``fairseq.meters.*`` meters (as in a full training checkpoint)."""
    meters = types.ModuleType("fairseq.meters")
    for name in ("AverageMeter", "TimeMeter", "StopwatchMeter"):
        setattr(meters, name, type(name, (), {"__module__": "fairseq.meters"}))
    package = types.ModuleType("fairseq")
    package.meters = meters
    monkeypatch.setitem(sys.modules, "fairseq", package)
    monkeypatch.setitem(sys.modules, "fairseq.meters", meters)
    return meters


def test_training_checkpoint_with_meters_converts_from_one_safe_read(tmp_path, fairseq_meters, monkeypatch):
    """fairseq's meters in ``extra_state`` load as plain data (no fairseq code); the file is read once."""
    args = fairseq_args()
    ckpt, sd = fairseq_checkpoint(args)
    loss, wps, wall = fairseq_meters.AverageMeter(), fairseq_meters.TimeMeter(), fairseq_meters.StopwatchMeter()
    loss.__dict__.update(val=3.9, avg=4.1, sum=41.0, count=10)
    wps.__dict__.update(init=0, start=1.5e9, n=1000)
    wall.__dict__.update(sum=3600.0, n=1200, start_time=None)
    ckpt["extra_state"]["train_meters"] = collections.OrderedDict(train_loss=loss, wps=wps, wall=wall)
    path = tmp_path / "checkpoint_last.pt"
    torch.save(ckpt, path)
    monkeypatch.delitem(sys.modules, "fairseq.meters")      # loading must not need fairseq
    monkeypatch.delitem(sys.modules, "fairseq")
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **kw: loads.append(kw.get("weights_only")) or real_load(f, *a, **kw))
    report = slimkit.convert("lite-transformer-fairseq", path, tmp_path / "out", quiet=True)
    assert loads == [True]
    assert set(report.mapped) == {f"model.{k}" for k in sd} and not report.initialised
    assert report.details["arch"] == args.arch
    model = load_converted(tmp_path / "out").eval()
    with torch.no_grad():
        out = model(input_ids=SRC, attention_mask=SRC.ne(PAD).long(), decoder_input_ids=TGT, use_cache=False).logits
    assert close(out, ref_logits(sd, args, TGT, SRC)) <= 1e-5


def test_without_conv_linear_the_projections_are_identities(tmp_path):
    args = fairseq_args(conv_linear=False, encoder_glu=False, decoder_glu=False)
    report, model, sd = _convert(tmp_path, args, name="nolinear")
    assert len(report.initialised) == 2 * 2 * 4 and all("identity" in v for v in report.initialised.values())
    conv = model.model.encoder.layers[0].lsra.conv
    assert torch.equal(conv.in_proj.weight, torch.eye(8)) and not conv.glu


class NotData:
    """A class a checkpoint may pickle: loading it would run this module's code."""


def test_bad_checkpoints_are_refused_with_a_clear_sentence(tmp_path):
    args = fairseq_args()
    ckpt, _ = fairseq_checkpoint(args)

    def refused(content, match, name):
        torch.save(content, tmp_path / f"{name}.pt")
        with pytest.raises(ConversionError, match=match):
            slimkit.convert("lite-transformer-fairseq", tmp_path / f"{name}.pt", tmp_path / name, quiet=True)
        assert not (tmp_path / name).exists()

    missing = {**ckpt, "model": {k: v for k, v in ckpt["model"].items() if k != "decoder.layers.1.fc1.bias"}}
    refused(missing, "lacks 'model.decoder.layers.1.fc1.bias'", "missing")
    extra = {**ckpt, "model": {**ckpt["model"], "decoder.layers.0.self_attn.branches.1.conv_bias": torch.zeros(8)}}
    refused(extra, "does not use .*conv_bias", "extra")
    refused({**ckpt, "args": NotData()}, "needs arbitrary code to load", "code")
    refused({k: v for k, v in ckpt.items() if k != "args"}, "no fairseq 'args' entry", "noargs")
    refused({**ckpt, "args": fairseq_args(encoder_branch_type=["dynamic:default:8:2", "attn:1:8:2"])},
            "exactly an attention branch followed by", "order")
    refused({**ckpt, "args": fairseq_args(adaptive_softmax_cutoff="20000,60000")}, "adaptive softmax", "adaptive")
    plain = {k.replace("self_attn.branches.0", "self_attn"): v for k, v in ckpt["model"].items()}
    refused({**ckpt, "model": plain}, "plain fairseq Transformer", "plain")


def test_layout_options_work_on_their_own(tmp_path):
    """The original-layout options build, run, cache and save without any checkpoint."""
    from slimkit_nlp.lsra import LiteTransformerConfig, LiteTransformerForConditionalGeneration

    cfg = LiteTransformerConfig(vocab_size=30, encoder_vocab_size=25, share_encoder_decoder_embeddings=False,
                                tie_word_embeddings=False, d_model=16, n_head=2, conv_heads=2, decoder_layers=2,
                                encoder_layers=2, kernel_sizes=[3, 5], encoder_kernel_sizes=[3, 5],
                                norm_position="post", position_embedding_type="sinusoidal", position_offset=2,
                                scale_embedding=True, conv_padding_order="before_projection", dropout=0.0,
                                max_position_embeddings=32)
    model = LiteTransformerForConditionalGeneration(cfg).eval()
    assert model.model.encoder.embed_tokens is not model.model.shared and model.lm_head.weight is not \
        model.model.shared.weight and model.model.encoder.embed_tokens.num_embeddings == 25
    assert not any("embed_positions" in k for k in model.state_dict())
    model.save_pretrained(tmp_path / "m")
    back = LiteTransformerForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    src = torch.randint(3, 25, (2, 6))
    with torch.no_grad():
        assert torch.equal(model(input_ids=src, decoder_input_ids=src[:, :3]).logits,
                           back(input_ids=src, decoder_input_ids=src[:, :3]).logits)
    out = back.generate(src, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (2, 5)
    from slimkit.errors import ConfigError

    with pytest.raises(ConfigError, match="norm_position must be one of"):
        LiteTransformerConfig(norm_position="middle")
    with pytest.raises(ConfigError, match="share_encoder_decoder_embeddings=False"):
        LiteTransformerConfig(encoder_vocab_size=10)
