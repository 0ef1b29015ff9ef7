"""HAT's fairseq checkpoints (github.com/mit-han-lab/hardware-aware-transformers) -> slimkit
``HatForConditionalGeneration`` with the original layout.

What HAT saves (``fairseq/checkpoint_utils.save_state``): ``{"args": argparse.Namespace, "model": state
dict, "optimizer_history": [...], "extra_state": {..., "train_meters": fairseq meters},
"last_optimizer_state": ...}``. The model is a ``transformersuper`` SuperTransformer (post-LN,
sinusoidal positions, embeddings scaled by sqrt(width), usually one table shared by the encoder, the
decoder and the output), every tensor at the SuperTransformer's size:

    encoder.embed_tokens.weight [V, D_enc]      decoder.embed_tokens.weight (the same tensor when shared)
    decoder.embed_out [V, D_dec]                (only without --share-decoder-input-output-embed)
    {encoder,decoder}.embed_positions._float_tensor, {encoder,decoder}.version   (markers, no weights)
    encoder.layers.N.self_attn.in_proj_weight [3 * qkv, D_enc], .in_proj_bias [3 * qkv],
        .out_proj.weight [D_enc, qkv], .out_proj.bias;  self_attn_layer_norm.*;  fc1 [F, D_enc];  fc2 [D_enc, F];
        final_layer_norm.*
    decoder.layers.N.self_attn.* (as above at D_dec), encoder_attn.in_proj_weight [3 * qkv, D_dec] (or, when
        D_enc != D_dec, encoder_attn.q_proj_weight [qkv, D_dec], k_proj_weight / v_proj_weight [qkv, D_enc],
        in_proj_bias), encoder_attn_layer_norm.*, fc1, fc2, final_layer_norm.*

A SubTransformer (HAT's released models are SubTransformers trained inside such a SuperTransformer) uses
the front slice of each tensor (``weight[:out, :in]``; q, k and v are the three row blocks of
``in_proj_weight``, columns cut to the input width), the first N layers, and decoder layer i attends
to the last 1, 2 or 3 encoder layer outputs (``--decoder-arbitrary-ende-attn``: -1, 1, 2). The
SubTransformer comes from the ``subtransformer`` option (HAT's ``.yml``, e.g.
``configs/wmt14.en-de/subtransformer/HAT_wmt14ende_raspberrypi@3.5s_bleu@25.8.yml``, the file HAT's
``generate.py`` is given), else from the checkpoint's own ``--*-subtransformer`` arguments (a released
SubTransformer was trained with that same file), else it is the largest (the whole SuperTransformer).
Every sliced tensor is recorded with its slice; layers beyond the SubTransformer are listed unused.

The arguments are read as data (the pickle's ``argparse.Namespace`` and fairseq's meters are rebuilt
as plain attributes; fairseq is never imported). Token ids are fairseq's dictionary's (bos 0, pad 1,
eos 2, unk 3; decoding starts with eos); the dictionary and BPE codes are not in the checkpoint.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from slimkit.convert import Checkpoint, ConversionError, Converted, WeightMap
from slimkit.errors import ConfigError

MODEL = "model."
#: fairseq's Dictionary: <s>, <pad>, </s>, <unk> first
BOS, PAD, EOS = 0, 1, 2
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_fast": "gelu_new", "gelu_accurate": "gelu_new"}
#: HAT's --decoder-arbitrary-ende-attn value -> number of last encoder layers attended
HAT_SPANS = {-1: 1, 1: 2, 2: 3}
SUB_FIELDS = ("encoder_embed_dim_subtransformer", "decoder_embed_dim_subtransformer",
              "encoder_layer_num_subtransformer", "decoder_layer_num_subtransformer",
              "encoder_ffn_embed_dim_all_subtransformer", "decoder_ffn_embed_dim_all_subtransformer",
              "encoder_self_attention_heads_all_subtransformer", "decoder_self_attention_heads_all_subtransformer",
              "decoder_ende_attention_heads_all_subtransformer", "decoder_arbitrary_ende_attn_all_subtransformer")


@dataclass
class SuperArch:
    """The SuperTransformer in the checkpoint: widths and depths read from the weights, the rest from args."""

    vocab_size: int
    encoder_embed_dim: int
    decoder_embed_dim: int
    encoder_layers: int
    decoder_layers: int
    encoder_ffn: int
    decoder_ffn: int
    qkv_dim: int
    share_all: bool
    share_output: bool
    separate_kv: bool
    activation: str
    dropout: float
    max_positions: int


# -- reading the file ---------------------------------------------------------------------------------
def read_args(checkpoint: Checkpoint) -> dict:
    """The checkpoint's fairseq arguments as a plain dict (``Checkpoint.objects["args"]``: the pickled
    ``argparse.Namespace`` as the dict of its attributes, from the one safe read of the file)."""
    args = checkpoint.objects.get("args")
    if not isinstance(args, dict):
        raise ConversionError(f"checkpoint {checkpoint.name!r} has no fairseq 'args', so it is not a fairseq training "
                              f"checkpoint of HAT; pass the .pt file that HAT's train.py or download_model.py wrote")
    return dict(args)


def _layer_count(tensors: dict, stack: str) -> int:
    found = {int(m.group(1)) for k in tensors if (m := re.match(rf"{MODEL}{stack}\.layers\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _check_original_layout(args: dict, tensors: dict, name: str) -> None:
    """Refuse fairseq models that are not HAT's ``transformersuper`` layout (one sentence each)."""
    if f"{MODEL}encoder.embed_tokens.weight" not in tensors:
        raise ConversionError(f"checkpoint {name!r} has no 'model.encoder.embed_tokens.weight', so it is not a fairseq "
                              f"encoder-decoder checkpoint; check the kind (slimkit convert --list)")
    arch = str(args.get("arch", ""))
    if not arch.startswith("transformersuper") or f"{MODEL}encoder.layers.0.self_attn.in_proj_weight" not in tensors:
        raise ConversionError(f"checkpoint {name!r} is a fairseq {arch or 'model'!r}, not HAT's 'transformersuper'; "
                              f"a Lite Transformer checkpoint converts with kind 'lite-transformer-fairseq'")
    refused = [("encoder_normalize_before", "pre-LN"), ("decoder_normalize_before", "pre-LN"),
               ("encoder_learned_pos", "learned positions"), ("decoder_learned_pos", "learned positions"),
               ("no_token_positional_embeddings", "no positions"), ("vocab_original_scaling", "SuperTransformer-"
                                                                    "width embedding scale"),
               ("adaptive_softmax_cutoff", "an adaptive softmax")]
    for field, what in refused:
        if args.get(field):
            raise ConversionError(f"checkpoint {name!r} was trained with --{field.replace('_', '-')} ({what}), which "
                                  f"HAT's released models do not use and this converter does not map; convert a "
                                  f"checkpoint of HAT's post-LN, sinusoidal-position layout")
    out_dim = args.get("decoder_output_dim")
    if out_dim not in (None, args.get("decoder_embed_dim")):
        raise ConversionError(f"checkpoint {name!r} projects the decoder output to {out_dim} (--decoder-output-dim), "
                              f"which this converter does not map; convert a checkpoint without that option")


def super_arch(args: dict, tensors: dict, name: str) -> SuperArch:
    """Sizes from the weights (so a file always matches itself), flags from the arguments."""
    _check_original_layout(args, tensors, name)
    enc = tensors[f"{MODEL}encoder.embed_tokens.weight"]
    has_dec = f"{MODEL}decoder.embed_tokens.weight" in tensors
    dec = tensors[f"{MODEL}decoder.embed_tokens.weight"] if has_dec else enc
    share_all = bool(args.get("share_all_embeddings")) or not has_dec
    activation = str(args.get("activation_fn", "relu"))
    if activation not in ACTIVATIONS:
        raise ConversionError(f"checkpoint {name!r} uses activation {activation!r}, which slimkit's HAT model does not "
                              f"have; it has {sorted(ACTIVATIONS)}")
    qkv = int(tensors[f"{MODEL}encoder.layers.0.self_attn.in_proj_weight"].shape[0]) // 3   # --qkv-dim
    fc1 = [tensors.get(f"{MODEL}{s}.layers.0.fc1.weight") for s in ("encoder", "decoder")]
    positions = [args.get("max_source_positions") or 1024, args.get("max_target_positions") or 1024]
    return SuperArch(
        vocab_size=int(enc.shape[0]), encoder_embed_dim=int(enc.shape[1]), decoder_embed_dim=int(dec.shape[1]),
        encoder_layers=_layer_count(tensors, "encoder"), decoder_layers=_layer_count(tensors, "decoder"),
        encoder_ffn=int(fc1[0].shape[0]) if fc1[0] is not None else int(args.get("encoder_ffn_embed_dim", 0)),
        decoder_ffn=int(fc1[1].shape[0]) if fc1[1] is not None else int(args.get("decoder_ffn_embed_dim", 0)),
        qkv_dim=qkv, share_all=share_all,
        share_output=share_all or bool(args.get("share_decoder_input_output_embed")),
        separate_kv=f"{MODEL}decoder.layers.0.encoder_attn.k_proj_weight" in tensors,
        activation=ACTIVATIONS[activation], dropout=float(args.get("dropout") or 0.0),
        max_positions=int(max(positions)))


# -- the SubTransformer --------------------------------------------------------------------------------
def _hat_fields(data: dict) -> dict:
    """HAT's SubTransformer fields with underscores (``encoder-embed-dim-subtransformer`` works too)."""
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _read_sub_option(value) -> dict:
    """The ``subtransformer`` option: a path to HAT's SubTransformer .yml or a dict of its fields."""
    if isinstance(value, (str, Path)):
        import yaml

        p = Path(value)
        if not p.is_file():
            raise ConfigError(f"subtransformer={str(p)!r} does not exist; pass HAT's SubTransformer .yml (configs/"
                              f"<task>/subtransformer/HAT_*.yml) or a dict of its fields")
        value = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ConfigError(f"subtransformer must be HAT's SubTransformer .yml or a dict of its fields, got "
                          f"{type(value).__name__}; pass e.g. configs/wmt14.en-de/subtransformer/HAT_*.yml")
    return _hat_fields(value)


def _per_layer(fields: dict, name: str, n: int, source: str) -> list[int]:
    values = fields.get(name)
    values = [values] if isinstance(values, int) else list(values or [])
    if len(values) < n:
        raise ConfigError(f"the SubTransformer from {source} gives {len(values)} value(s) for {name!r} but has {n} "
                          f"layers; give one per layer")
    return [int(v) for v in values[:n]]


def sub_from_fields(fields: dict, source: str):
    """A slimkit ``SubConfig`` from HAT's ``*-subtransformer`` fields (spans -1/1/2 -> 1/2/3)."""
    from slimkit_nlp.hat.space import SubConfig

    missing = [f for f in SUB_FIELDS if fields.get(f) is None]
    if missing:
        raise ConfigError(f"the SubTransformer from {source} lacks {missing[0]!r}; give all ten HAT "
                          f"*-subtransformer fields (as in HAT's configs/<task>/subtransformer/*.yml)")
    n_enc, n_dec = int(fields["encoder_layer_num_subtransformer"]), int(fields["decoder_layer_num_subtransformer"])
    arbitrary = _per_layer(fields, "decoder_arbitrary_ende_attn_all_subtransformer", n_dec, source)
    bad = [a for a in arbitrary if a not in HAT_SPANS]
    if bad:
        raise ConfigError(f"decoder-arbitrary-ende-attn value {bad[0]} from {source} is not one of HAT's -1, 1, 2 "
                          f"(attend to the last 1, 2 or 3 encoder layers); fix the SubTransformer config")
    return SubConfig(
        encoder_embed_dim=int(fields["encoder_embed_dim_subtransformer"]), encoder_layers=n_enc,
        encoder_ffn_dims=_per_layer(fields, "encoder_ffn_embed_dim_all_subtransformer", n_enc, source),
        encoder_heads=_per_layer(fields, "encoder_self_attention_heads_all_subtransformer", n_enc, source),
        decoder_embed_dim=int(fields["decoder_embed_dim_subtransformer"]), decoder_layers=n_dec,
        decoder_ffn_dims=_per_layer(fields, "decoder_ffn_embed_dim_all_subtransformer", n_dec, source),
        decoder_heads=_per_layer(fields, "decoder_self_attention_heads_all_subtransformer", n_dec, source),
        ende_heads=_per_layer(fields, "decoder_ende_attention_heads_all_subtransformer", n_dec, source),
        ende_spans=[HAT_SPANS[a] for a in arbitrary])


def largest_sub(arch: SuperArch, heads: tuple[int, int]):
    """The whole SuperTransformer as a SubTransformer (every layer, every width)."""
    from slimkit_nlp.hat.space import SubConfig

    ne, nd = arch.encoder_layers, arch.decoder_layers
    return SubConfig(encoder_embed_dim=arch.encoder_embed_dim, encoder_layers=ne, encoder_ffn_dims=[arch.encoder_ffn] * ne,
                     encoder_heads=[heads[0]] * ne, decoder_embed_dim=arch.decoder_embed_dim, decoder_layers=nd,
                     decoder_ffn_dims=[arch.decoder_ffn] * nd, decoder_heads=[heads[1]] * nd,
                     ende_heads=[heads[1]] * nd, ende_spans=[1] * nd)


def choose_sub(args: dict, arch: SuperArch, option) -> tuple:
    """(SubConfig, where it came from): the option, else the checkpoint's arguments, else the largest."""
    from slimkit_nlp.hat.space import SubConfig

    if option is not None:
        fields = _read_sub_option(option)
        if "decoder_embed_dim" in fields:           # a slimkit SubConfig dict
            return SubConfig.from_dict(fields), "the subtransformer option (slimkit SubConfig)"
        return sub_from_fields(fields, "the subtransformer option"), "the subtransformer option"
    if any(args.get(f) is not None for f in SUB_FIELDS):
        return sub_from_fields(args, "the checkpoint's arguments"), "the checkpoint's --*-subtransformer arguments"
    heads = (int(args.get("encoder_attention_heads") or 8), int(args.get("decoder_attention_heads") or 8))
    return largest_sub(arch, heads), "none given: the largest SubTransformer (the whole SuperTransformer)"


def _check_fits(sub, arch: SuperArch) -> None:
    """Refuse a SubTransformer that does not fit inside the checkpoint's SuperTransformer."""
    limits = [("encoder_embed_dim", [sub.encoder_embed_dim], arch.encoder_embed_dim),
              ("decoder_embed_dim", [sub.decoder_embed_dim], arch.decoder_embed_dim),
              ("encoder_layers", [sub.encoder_layers], arch.encoder_layers),
              ("decoder_layers", [sub.decoder_layers], arch.decoder_layers),
              ("encoder_ffn_dims", sub.encoder_ffn_dims, arch.encoder_ffn),
              ("decoder_ffn_dims", sub.decoder_ffn_dims, arch.decoder_ffn)]
    for name, values, limit in limits:
        over = [v for v in values if not 0 < v <= limit]
        if over:
            raise ConfigError(f"the SubTransformer's {name} {over[0]} does not fit the checkpoint's SuperTransformer "
                              f"(at most {limit}); pass the SubTransformer config that belongs to this checkpoint")
    heads = sub.encoder_heads + sub.decoder_heads + sub.ende_heads
    bad = [h for h in heads if h <= 0 or arch.qkv_dim % h]
    if bad:
        raise ConfigError(f"{bad[0]} attention heads do not divide the checkpoint's q/k/v width {arch.qkv_dim}; pass "
                          f"the SubTransformer config that belongs to this checkpoint")


def effective_spans(sub, arch: SuperArch) -> tuple[list[int], list[str]]:
    """The spans slimkit needs for HAT's arbitrary encoder-decoder attention, and notes.

    HAT picks encoder outputs by index among the SuperTransformer's layers, where layers beyond the
    SubTransformer pass their input through, so with fewer encoder layers some picks repeat the last
    output. Attention over keys repeated evenly equals attention over each once; uneven repeats are refused.
    """
    spans, notes = [], []
    n, total = sub.encoder_layers, arch.encoder_layers
    for i, span in enumerate(sub.ende_spans):
        picks = [min(total - 1 - j, n - 1) for j in range(span)]
        counts = {p: picks.count(p) for p in picks}
        if len(set(counts.values())) != 1:
            raise ConversionError(
                f"decoder layer {i} attends to HAT's last {span} encoder outputs of {total}, which with only {n} "
                f"encoder layers repeats some layers unevenly ({picks}); slimkit cannot express that attention, so "
                f"use a SubTransformer with all {total} encoder layers or a span of 1")
        spans.append(len(counts))
        if len(counts) != span:
            notes.append(f"decoder layer {i}: HAT's span {span} over {n} of {total} encoder layers repeats the same "
                         f"outputs, which attends exactly like span {len(counts)}")
    return spans, notes


# -- the model -------------------------------------------------------------------------------------------
def model_config(arch: SuperArch, sub, spans: list[int]) -> dict:
    """``HatModelConfig`` arguments for ``sub`` in HAT's layout (dropout scaled with the width, as HAT does)."""
    return dict(
        vocab_size=arch.vocab_size, max_position_embeddings=arch.max_positions, qkv_dim=arch.qkv_dim,
        encoder_embed_dim=sub.encoder_embed_dim, encoder_layers=sub.encoder_layers,
        encoder_ffn_dims=list(sub.encoder_ffn_dims), encoder_heads=list(sub.encoder_heads),
        decoder_embed_dim=sub.decoder_embed_dim, decoder_layers=sub.decoder_layers,
        decoder_ffn_dims=list(sub.decoder_ffn_dims), decoder_heads=list(sub.decoder_heads),
        ende_heads=list(sub.ende_heads), ende_spans=list(spans), activation=arch.activation, layer_norm_eps=1e-5,
        dropout=round(arch.dropout * sub.decoder_embed_dim / arch.decoder_embed_dim, 6),
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS,
        normalize_before=False, position_embedding="sinusoidal", encoder_position_width=arch.encoder_embed_dim,
        decoder_position_width=arch.decoder_embed_dim, scale_embedding=True, share_all_embeddings=arch.share_all,
        share_decoder_input_output_embed=arch.share_output)


def _describe(index: tuple, shape: tuple) -> str:
    parts = [f"{s.start or 0}:{s.stop if s.stop is not None else n}" for s, n in zip(index, shape)]
    return f"slice [{', '.join(parts)}] of {tuple(shape)}"


def take(wm: WeightMap, source: str, target: str, rows: slice = slice(None), cols: slice = slice(None),
         also: tuple = ()) -> None:
    """Copy ``source[rows, cols]`` (a vector: ``source[rows]``) into ``target``; a part is recorded with its slice.
    ``also``: other checkpoint keys holding the same tensor (recorded as sources too)."""
    full = wm.source(source)
    index = (rows,) if full.dim() == 1 else (rows, cols)
    part = tuple(full[index].shape) != tuple(full.shape)
    wm.copy(source, target, transform=(lambda v: v[index]) if part else None)
    if part or also:
        how = _describe(index, tuple(full.shape)) if part else "copied"
        wm.derived([source, *also], [target], how + (f" (one tensor with {', '.join(also)})" if also else ""))


def map_attention(wm: WeightMap, src: str, dst: str, q_in: int, kv_in: int, qkv: int, separate: bool) -> None:
    """One attention: q/k/v from ``in_proj_weight``'s row blocks (or the separate q/k/v weights), columns cut
    to the query / key-value width; ``out_proj`` cut to ``q_in`` rows."""
    rows = [slice(0, qkv), slice(qkv, 2 * qkv), slice(2 * qkv, 3 * qkv)]
    for part, r, width in zip("qkv", rows, (q_in, kv_in, kv_in)):
        if separate:
            take(wm, f"{src}.{part}_proj_weight", f"{dst}.{part}_proj.weight", cols=slice(0, width))
        else:
            take(wm, f"{src}.in_proj_weight", f"{dst}.{part}_proj.weight", r, slice(0, width))
        take(wm, f"{src}.in_proj_bias", f"{dst}.{part}_proj.bias", r)
    take(wm, f"{src}.out_proj.weight", f"{dst}.out_proj.weight", slice(0, q_in))
    take(wm, f"{src}.out_proj.bias", f"{dst}.out_proj.bias", slice(0, q_in))


def map_layer(wm: WeightMap, stack: str, i: int, sub, arch: SuperArch) -> None:
    """Every tensor of encoder or decoder layer ``i`` (its norms, attentions and FFN, front-sliced)."""
    src, dst = f"{MODEL}{stack}.layers.{i}", f"{stack}.layers.{i}"
    d = sub.encoder_embed_dim if stack == "encoder" else sub.decoder_embed_dim
    ffn = (sub.encoder_ffn_dims if stack == "encoder" else sub.decoder_ffn_dims)[i]
    width, hidden = slice(0, d), slice(0, ffn)
    map_attention(wm, f"{src}.self_attn", f"{dst}.self_attn", d, d, arch.qkv_dim, False)
    norms = ["self_attn_layer_norm", "final_layer_norm"]
    if stack == "decoder":
        map_attention(wm, f"{src}.encoder_attn", f"{dst}.encoder_attn", d, sub.encoder_embed_dim, arch.qkv_dim,
                      arch.separate_kv)
        norms.append("encoder_attn_layer_norm")
    for norm in norms:
        for leaf in ("weight", "bias"):
            take(wm, f"{src}.{norm}.{leaf}", f"{dst}.{norm}.{leaf}", width)
    take(wm, f"{src}.fc1.weight", f"{dst}.ffn.fc1.weight", hidden, width)
    take(wm, f"{src}.fc1.bias", f"{dst}.ffn.fc1.bias", hidden)
    take(wm, f"{src}.fc2.weight", f"{dst}.ffn.fc2.weight", width, hidden)
    take(wm, f"{src}.fc2.bias", f"{dst}.ffn.fc2.bias", width)


def map_embeddings(wm: WeightMap, sub, arch: SuperArch) -> None:
    """Token tables (one shared table at the larger width, or one per stack) and the output projection."""
    enc, dec = f"{MODEL}encoder.embed_tokens.weight", f"{MODEL}decoder.embed_tokens.weight"
    if arch.share_all:
        shared = [dec] if dec in wm.checkpoint.tensors else []
        if shared and not wm.source(dec).equal(wm.source(enc)):
            raise ConversionError(f"checkpoint {wm.checkpoint.name!r} says --share-all-embeddings but its encoder and "
                                  f"decoder embeddings differ, so it is damaged or edited; convert the original file")
        width = max(sub.encoder_embed_dim, sub.decoder_embed_dim)
        take(wm, enc, "encoder.embed_tokens.weight", cols=slice(0, width), also=tuple(shared))
    else:
        take(wm, enc, "encoder.embed_tokens.weight", cols=slice(0, sub.encoder_embed_dim))
        take(wm, dec, "decoder.embed_tokens.weight", cols=slice(0, sub.decoder_embed_dim))
    if not arch.share_output:
        take(wm, f"{MODEL}decoder.embed_out", "decoder.output_projection.weight", cols=slice(0, sub.decoder_embed_dim))


def declare_unused(wm: WeightMap, sub, arch: SuperArch) -> None:
    """Markers, layers beyond the SubTransformer and training state, each with its reason."""
    tensors = wm.checkpoint.tensors
    for stack in ("encoder", "decoder"):
        for leaf, why in (("version", "fairseq's state-dict version marker, not a weight"),
                          ("embed_positions._float_tensor", "fairseq's dtype/device marker of the sinusoidal "
                                                            "positions, which are computed, not stored")):
            if f"{MODEL}{stack}.{leaf}" in tensors:
                wm.unused(f"{MODEL}{stack}.{leaf}", why)
        n, total = (sub.encoder_layers, arch.encoder_layers) if stack == "encoder" else \
            (sub.decoder_layers, arch.decoder_layers)
        for i in range(n, total):
            wm.unused_all([k for k in tensors if k.startswith(f"{MODEL}{stack}.layers.{i}.")],
                          f"{stack} layer {i} is beyond the SubTransformer's {n} {stack} layers (HAT skips it)")
    wm.unused_all([k for k in tensors if not k.startswith(MODEL)],
                  "training state (optimizer, scheduler, meters), not weights")


def _notes(arch: SuperArch, sub, where: str, span_notes: list[str], dtype) -> list[str]:
    scaled = arch.dropout * sub.decoder_embed_dim / arch.decoder_embed_dim
    notes = [f"HAT SubTransformer from {where}: encoder {sub.encoder_layers} x {sub.encoder_embed_dim}, decoder "
             f"{sub.decoder_layers} x {sub.decoder_embed_dim}, cut from a SuperTransformer of encoder "
             f"{arch.encoder_layers} x {arch.encoder_embed_dim}, decoder {arch.decoder_layers} x "
             f"{arch.decoder_embed_dim}, FFN {arch.encoder_ffn}/{arch.decoder_ffn}, q/k/v width {arch.qkv_dim}",
             "layout: post-LN, fairseq sinusoidal positions computed at the SuperTransformer width, embeddings x "
             f"sqrt(width), {'one shared embedding' if arch.share_all else 'separate embeddings'}, output "
             f"{'tied to the decoder embedding' if arch.share_output else 'projection decoder.embed_out'}",
             "token ids are fairseq's dictionary's (bos 0, pad 1, eos 2, unk 3; decoding starts with eos 2); the "
             "dictionary (dict.*.txt) and BPE codes are not in the checkpoint",
             f"dropout {scaled:g} = HAT's {arch.dropout:g} x decoder width ratio (training only; HAT's attention and "
             "activation dropout are not modelled)", *span_notes]
    if str(dtype) != "torch.float32":
        notes.append(f"weights stored as {dtype} (fp16 training) are converted to float32")
    return notes


def convert(checkpoint: Checkpoint, *, subtransformer=None) -> Converted:
    """A HAT fairseq checkpoint -> ``HatForConditionalGeneration`` in HAT's layout (module docstring).

    ``subtransformer``: HAT's SubTransformer ``.yml`` (path), a dict of its fields, or a slimkit
    ``SubConfig`` dict; default: the checkpoint's own ``--*-subtransformer`` arguments, else the largest.
    """
    from slimkit_nlp.hat.modeling import HatModelConfig, build_model

    args = read_args(checkpoint)
    arch = super_arch(args, checkpoint.tensors, checkpoint.name)
    sub, where = choose_sub(args, arch, subtransformer)
    _check_fits(sub, arch)
    spans, span_notes = effective_spans(sub, arch)
    spec = {"config": model_config(arch, sub, spans)}
    model = build_model(HatModelConfig(**spec["config"])).eval()
    wm = WeightMap(checkpoint, model)
    map_embeddings(wm, sub, arch)
    for stack, n in (("encoder", sub.encoder_layers), ("decoder", sub.decoder_layers)):
        for i in range(n):
            map_layer(wm, stack, i, sub, arch)
    declare_unused(wm, sub, arch)
    dtype = checkpoint.tensors[f"{MODEL}encoder.embed_tokens.weight"].dtype
    details = {"subtransformer": sub.to_dict(), "subtransformer_from": where, "super": arch.__dict__,
               "sqrt_scale": {"encoder": math.sqrt(sub.encoder_embed_dim), "decoder": math.sqrt(sub.decoder_embed_dim)}}
    return Converted(model=model, build=spec, weights=wm, notes=_notes(arch, sub, where, span_notes, dtype),
                     details=details)


def build(spec: dict):
    """The bare slimkit HAT model of a converted checkpoint (weights loaded afterwards by from_pretrained)."""
    from slimkit_nlp.hat.modeling import HatModelConfig, build_model

    return build_model(HatModelConfig(**spec["config"])).eval()
