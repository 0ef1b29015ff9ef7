"""Checkpoints of Lite Transformer (github.com/mit-han-lab/lite-transformer) -> slimkit Lite Transformer models.

What the repository's fairseq saves: ``{"args": argparse.Namespace, "model": state dict,
"optimizer_history": [...], "extra_state": {..., "train_meters": fairseq meters}, "last_optimizer_state":
{...}}``. The options and meters are read as data (``fairseq_pickle``: fairseq is not needed, nothing in the
file is run; the options come from ``Checkpoint.objects["args"]``). Two architectures:

* ``transformer_multibranch_v2*`` (translation, summarisation) -> ``LiteTransformerForConditionalGeneration``;
* ``transformer_lm_multibranch_v2*`` (language models, pre-norm) -> ``LiteTransformerForCausalLM``.

The state dict, per layer ``L`` of ``encoder`` / ``decoder`` (``--*-branch-type [attn:1:D:H, T:default:D:H]``)::

    L.self_attn.branches.0.{q,k,v,out}_proj.{weight,bias}   attention branch      -> L.lsra.attn.*
    L.self_attn.branches.1.linear1.{weight,bias}            [C, C] or [2C, C] GLU -> L.lsra.conv.in_proj.*
    L.self_attn.branches.1.weight                           lightweight [H, 1, K] or [H, K] -> L.lsra.conv.conv.weight
    L.self_attn.branches.1.weight_linear.weight             dynamic [H*K, C]      -> L.lsra.conv.conv.weight_linear.weight
    L.self_attn.branches.1.linear2.{weight,bias}            [C, C]                -> L.lsra.conv.out_proj.*
    L.self_attn_layer_norm / encoder_attn_layer_norm / final_layer_norm          -> L.norm1 / norm_cross / norm2
    L.encoder_attn.{q,k,v,out}_proj (decoder, full width)                         -> L.cross.*
    L.fc1 / L.fc2                                                                 -> L.ffn.fc1 / fc2

plus ``embed_tokens.weight`` (shared by encoder, decoder and output with ``--share-all-embeddings``),
``decoder.embed_out`` (own output matrix), ``embed_positions.weight`` (learned positions only),
``layer_norm`` (pre-norm only) and the ``version`` / ``embed_positions._float_tensor`` markers, which
hold no weights. Sizes (width, depth, kernels, GLU, vocabularies) are read from the tensor shapes; the
head counts, the norm position and the embedding sharing from the options. The slimkit model takes the
original layout: post-LayerNorm, sinusoidal positions numbered from ``pad_token_id + 1``, embeddings
scaled by sqrt(d), fairseq's padding order in the conv branch (zeroed before the input projection).
Token ids are the fairseq dictionary's (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2 unless given); decoding
starts with ``</s>`` as fairseq's does.
"""
from __future__ import annotations

import re
from typing import Any

from slimkit.convert import Checkpoint, ConversionError, Converted, WeightMap

MODEL = "model."
FAIRSEQ_BOS, FAIRSEQ_PAD, FAIRSEQ_EOS = 0, 1, 2
ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
PARTS = ("weight", "bias")
MARKERS = {"version": "fairseq's state-dict format version number, not a weight",
           "embed_positions._float_tensor": "fairseq's dtype marker of the sinusoidal positions, which slimkit "
                                            "computes (nothing to store)"}


# -- the options stored beside the weights -------------------------------------------------------
def read_args(checkpoint: Checkpoint) -> dict:
    """fairseq's command-line options of the run, as a dict (``Checkpoint.objects["args"]``: the pickled
    ``argparse.Namespace`` as the dict of its attributes; refused when the file has none)."""
    args = checkpoint.objects.get("args")
    if isinstance(args, dict):
        return dict(args)
    raise ConversionError(f"checkpoint {checkpoint.name!r} has no fairseq 'args' entry, so its architecture options "
                          f"(branch types, heads, norm position) are unknown; convert the checkpoint fairseq wrote "
                          f"(checkpoint_best.pt), not a bare state dict")


def _arg(args: dict, name: str, default: Any) -> Any:
    value = args.get(name)
    return default if value is None else value


# -- reading the layout --------------------------------------------------------------------------
def parse_branches(spec, side: str) -> dict:
    """``[attn:1:D:H, dynamic:default:D:H]`` -> ``{attn_dim, heads, conv_type, conv_dim, conv_heads}``."""
    parts = [str(s).split(":") for s in (spec or [])]
    if len(parts) != 2 or any(len(p) != 4 for p in parts) or parts[0][0] != "attn" \
            or parts[1][0] not in ("lightweight", "dynamic"):
        raise ConversionError(f"{side}_branch_type is {spec!r}; slimkit's Lite Transformer holds exactly an attention "
                              f"branch followed by a lightweight or dynamic conv branch ('attn:1:D:H', "
                              f"'dynamic:default:D:H'), so this checkpoint cannot be converted")
    return {"attn_dim": int(parts[0][2]), "heads": int(parts[0][3]), "conv_type": parts[1][0],
            "conv_dim": int(parts[1][2]), "conv_heads": int(parts[1][3])}


def count_layers(weights: dict, side: str) -> int:
    """Layers of ``side`` (``encoder`` / ``decoder``) from keys ``side.layers.N.``."""
    found = {int(m.group(1)) for k in weights for m in [re.match(rf"{side}\.layers\.(\d+)\.", k)] if m}
    return max(found) + 1 if found else 0


def _layer_conv(weights: dict, layer: str, branches: dict) -> dict:
    """Kernel size, conv type and GLU / projections of one layer's conv branch, from its tensors."""
    conv = f"{layer}.self_attn.branches.1"
    heads = branches["conv_heads"]
    if f"{conv}.weight_linear.weight" in weights:
        conv_type, kernel = "dynamic", weights[f"{conv}.weight_linear.weight"].shape[0] // heads
    elif f"{conv}.weight" in weights:
        conv_type, kernel = "lightweight", weights[f"{conv}.weight"].shape[-1]
    else:
        raise ConversionError(f"the checkpoint has no conv branch in {layer!r} (no '{conv}.weight' nor "
                              f"'{conv}.weight_linear.weight'), so it is not a complete Lite Transformer checkpoint; "
                              f"check the file")
    linear = weights.get(f"{conv}.linear1.weight")
    glu = linear is not None and linear.shape[0] == 2 * linear.shape[1]
    return {"conv_type": conv_type, "kernel": int(kernel), "glu": glu, "linear": linear is not None}


def _side_layout(weights: dict, args: dict, side: str) -> dict:
    """What one stack's tensors and options say: layers, kernels, branch split and heads, GLU, norms."""
    n = count_layers(weights, side)
    if n == 0 or f"{side}.layers.0.self_attn.branches.0.q_proj.weight" not in weights:
        raise ConversionError(f"the checkpoint's {side} has no multibranch layers ('{side}.layers.0.self_attn."
                              f"branches.0...'), so it is a plain fairseq Transformer or another model, not Lite "
                              f"Transformer; check the kind (slimkit convert --list)")
    branches = parse_branches(args.get(f"{side}_branch_type"), side)
    convs = [_layer_conv(weights, f"{side}.layers.{i}", branches) for i in range(n)]
    if len({(c["conv_type"], c["glu"], c["linear"]) for c in convs}) != 1:
        raise ConversionError(f"the {side} layers differ in conv type or projections, which one slimkit config "
                              f"cannot hold; convert a checkpoint whose layers share one branch type")
    return {"layers": n, "kernels": [c["kernel"] for c in convs], **branches, **convs[0],
            "post_norm": not _arg(args, f"{side}_normalize_before", False),
            "final_norm": f"{side}.layer_norm.weight" in weights,
            "learned_pos": f"{side}.embed_positions.weight" in weights,
            "ffn": int(weights[f"{side}.layers.0.fc1.weight"].shape[0])}


def _refuse_unsupported(weights: dict, args: dict) -> None:
    """Parts of fairseq's decoder slimkit does not have: adaptive input / softmax, projections, no positions."""
    checks = (
        (any(k.startswith(("decoder.adaptive_softmax.", "decoder.embed_tokens.embeddings.")) for k in weights)
         or args.get("adaptive_input") or args.get("adaptive_softmax_cutoff"),
         "adaptive input / adaptive softmax (e.g. the WikiText-103 model), which slimkit's Lite Transformer does "
         "not have"),
        (any(".project_out_dim." in k or ".project_in_dim." in k or ".input_transform." in k for k in weights),
         "an input or output projection between embedding and model widths, which slimkit's model does not have"),
        (args.get("no_token_positional_embeddings"), "no position embeddings (--no-token-positional-embeddings)"),
        (_arg(args, "activation_fn", "relu") not in ("relu", "gelu"),
         f"activation {args.get('activation_fn')!r}; slimkit converts 'relu' and 'gelu'"),
    )
    for failed, what in checks:
        if failed:
            raise ConversionError(f"the checkpoint uses {what}, so it cannot be converted; convert a checkpoint "
                                  f"trained without it")


def _same_sides(enc: dict, dec: dict) -> None:
    """One slimkit config holds both stacks: their shared settings must agree."""
    for key in ("attn_dim", "heads", "conv_type", "conv_heads", "glu", "linear", "post_norm", "final_norm",
                "learned_pos", "ffn"):
        if enc[key] != dec[key]:
            raise ConversionError(f"the encoder has {key}={enc[key]!r} but the decoder {key}={dec[key]!r}; slimkit's "
                                  f"Lite Transformer uses one setting for both, so this checkpoint cannot be converted")
    if any(k % 2 == 0 for k in enc["kernels"]):
        raise ConversionError(f"the encoder's kernel sizes {enc['kernels']} include an even size, whose centred "
                              f"padding the original code does not define; convert a checkpoint with odd kernels")


def _default_cross_heads(arch: str) -> int:
    """``decoder_attention_heads`` of the registered architecture (4 for IWSLT, 16 for the big ones, else 8)."""
    return 4 if "iwslt" in arch else 16 if "big" in arch else 8


def _config(weights: dict, args: dict, layout: dict, task: str, tokens: dict) -> dict:
    """``LiteTransformerConfig`` arguments of the original layout."""
    dec = layout["decoder"]
    vocab, d = (int(x) for x in weights["decoder.embed_tokens.weight"].shape)
    pad = tokens["pad_token_id"]
    positions = _arg(args, "max_target_positions", _arg(args, "tokens_per_sample", 1024))
    cfg = dict(
        vocab_size=vocab, d_model=d, n_head=dec["heads"], attention_ratio=dec["attn_dim"] / d,
        decoder_layers=dec["layers"], kernel_sizes=dec["kernels"], conv_type=dec["conv_type"],
        conv_heads=dec["conv_heads"], glu=dec["glu"], weight_softmax=bool(_arg(args, "weight_softmax", True)),
        ffn_dim=dec["ffn"], activation=_arg(args, "activation_fn", "relu"), dropout=float(_arg(args, "dropout", 0.1)),
        attention_dropout=float(_arg(args, "attention_dropout", 0.0)),
        weight_dropout=float(_arg(args, "weight_dropout", _arg(args, "attention_dropout", 0.0))),
        norm_position="post" if dec["post_norm"] else "pre", final_layer_norm=dec["final_norm"],
        position_embedding_type="learned" if dec["learned_pos"] else "sinusoidal", position_offset=pad + 1,
        scale_embedding=True, tie_word_embeddings="decoder.embed_out" not in weights,
        conv_padding_order="before_projection", layer_norm_eps=1e-5, **tokens)
    if dec["learned_pos"]:
        positions = int(weights["decoder.embed_positions.weight"].shape[0]) - pad - 1
    if task == "seq2seq":
        enc = layout["encoder"]
        src_positions = _arg(args, "max_source_positions", 1024)
        if enc["learned_pos"]:
            src_positions = int(weights["encoder.embed_positions.weight"].shape[0]) - pad - 1
            if src_positions != positions:
                raise ConversionError(f"the learned position tables hold {src_positions} source and {positions} "
                                      f"target positions; slimkit uses one size, so this cannot be converted")
        positions = max(positions, src_positions)
        shared = bool(args.get("share_all_embeddings"))
        cfg.update(encoder_layers=enc["layers"], encoder_kernel_sizes=enc["kernels"],
                   cross_attention_heads=int(_arg(args, "decoder_attention_heads",
                                                  _default_cross_heads(str(args.get("arch", ""))))),
                   share_encoder_decoder_embeddings=shared,
                   encoder_vocab_size=None if shared else int(weights["encoder.embed_tokens.weight"].shape[0]),
                   decoder_start_token_id=tokens["eos_token_id"])
    cfg["max_position_embeddings"] = int(positions)
    return cfg


def read_layout(weights: dict, args: dict, tokens: dict) -> tuple[str, dict, dict]:
    """``(task, layout per stack, config arguments)`` of a Lite Transformer state dict and its options."""
    if "decoder.embed_tokens.weight" not in weights:
        raise ConversionError("the checkpoint's model has no 'decoder.embed_tokens.weight', so it is not a Lite "
                              "Transformer fairseq checkpoint; check the kind (slimkit convert --list)")
    _refuse_unsupported(weights, args)
    task = "seq2seq" if "encoder.embed_tokens.weight" in weights else "lm"
    layout = {"decoder": _side_layout(weights, args, "decoder")}
    if task == "lm":
        layout["decoder"]["post_norm"] = False   # fairseq's language models are always pre-norm
    else:
        layout["encoder"] = _side_layout(weights, args, "encoder")
        _same_sides(layout["encoder"], layout["decoder"])
    cfg = _config(weights, args, layout, task, tokens)
    return task, layout, cfg


# -- the weights ----------------------------------------------------------------------------------
def _linear(src: str, dst: str) -> list:
    return [(f"{src}.{p}", f"{dst}.{p}", None) for p in PARTS]


def _lightweight_kernel(t):
    """``[H, 1, K]`` (the TBC module) or ``[H, K]`` (the CUDA module) -> slimkit's ``[H, K]``."""
    return t.reshape(t.shape[0], t.shape[-1])


def layer_pairs(src: str, dst: str, conv_type: str, linear: bool, cross: bool) -> list:
    """``(checkpoint key, model name, transform)`` for every tensor of one multibranch layer."""
    attn, conv = f"{src}.self_attn.branches.0", f"{src}.self_attn.branches.1"
    pairs = [p for name in ATTENTION for p in _linear(f"{attn}.{name}", f"{dst}.lsra.attn.{name}")]
    if linear:
        pairs += _linear(f"{conv}.linear1", f"{dst}.lsra.conv.in_proj")
        pairs += _linear(f"{conv}.linear2", f"{dst}.lsra.conv.out_proj")
    if conv_type == "dynamic":
        pairs.append((f"{conv}.weight_linear.weight", f"{dst}.lsra.conv.conv.weight_linear.weight", None))
    else:
        pairs.append((f"{conv}.weight", f"{dst}.lsra.conv.conv.weight", _lightweight_kernel))
    norms = [("self_attn_layer_norm", "norm1"), ("final_layer_norm", "norm2")]
    if cross:
        norms.append(("encoder_attn_layer_norm", "norm_cross"))
        pairs += [p for name in ATTENTION for p in _linear(f"{src}.encoder_attn.{name}", f"{dst}.cross.{name}")]
    for old, new in norms:
        pairs += _linear(f"{src}.{old}", f"{dst}.{new}")
    return pairs + _linear(f"{src}.fc1", f"{dst}.ffn.fc1") + _linear(f"{src}.fc2", f"{dst}.ffn.fc2")


def _identity_projections(wm: WeightMap, model, dst: str) -> None:
    """Without ``--conv-linear`` the original has no projection around the conv: identity in, identity out."""
    import torch

    for proj in ("in_proj", "out_proj"):
        layer = model.get_submodule(f"{dst}.lsra.conv.{proj}")
        with torch.no_grad():
            layer.weight.copy_(torch.eye(layer.weight.shape[0], layer.weight.shape[1]))
            layer.bias.zero_()
        for part in PARTS:
            wm.initialised(f"{dst}.lsra.conv.{proj}.{part}",
                           "identity (the original has no projection around the conv without --conv-linear)")


def _map_stack(wm: WeightMap, model, layout: dict, side: str, dst: str, cross: bool) -> None:
    """Layers, learned positions and final norm of one stack."""
    for i in range(layout["layers"]):
        src_layer, dst_layer = f"{MODEL}{side}.layers.{i}", f"{dst}.layers.{i}"
        for source, target, transform in layer_pairs(src_layer, dst_layer, layout["conv_type"], layout["linear"],
                                                     cross):
            wm.copy(source, target, transform)
        if not layout["linear"]:
            _identity_projections(wm, model, dst_layer)
    if layout["learned_pos"]:
        wm.copy(f"{MODEL}{side}.embed_positions.weight", f"{dst}.embed_positions.weight")
    if layout["final_norm"]:
        for part in PARTS:
            wm.copy(f"{MODEL}{side}.layer_norm.{part}", f"{dst}.norm.{part}")


def _map_embeddings(wm: WeightMap, cfg: dict, task: str) -> None:
    """Token embeddings (shared or not) and the output matrix."""
    import torch

    enc, dec = f"{MODEL}encoder.embed_tokens.weight", f"{MODEL}decoder.embed_tokens.weight"
    if task == "lm":
        wm.copy(dec, "model.embed_tokens.weight")
    elif cfg["share_encoder_decoder_embeddings"]:
        if not torch.equal(wm.source(enc), wm.source(dec)):
            raise ConversionError("the checkpoint's options say --share-all-embeddings but its encoder and decoder "
                                  "embeddings differ, so the file is inconsistent; convert the file fairseq wrote")
        wm.copy(enc, "model.shared.weight")
        wm.derived([enc, dec], ["model.shared.weight"],
                   "copied from encoder.embed_tokens.weight; decoder.embed_tokens.weight is the same shared tensor")
    else:
        wm.copy(enc, "model.encoder.embed_tokens.weight")
        wm.copy(dec, "model.shared.weight")
    if not cfg["tie_word_embeddings"]:
        wm.copy(f"{MODEL}decoder.embed_out", "lm_head.weight")


def _declare_unused(wm: WeightMap) -> None:
    """Format markers inside the model and everything outside it (optimizer and training state)."""
    for key in wm.checkpoint.tensors:
        if not key.startswith(MODEL):
            wm.unused(key, f"training state, not weights (checkpoint entry {key.split('.', 1)[0]!r})")
            continue
        for suffix, why in MARKERS.items():
            if key.endswith("." + suffix):
                wm.unused(key, why)


def build(spec: dict):
    """The bare slimkit model of a converted checkpoint: ``{"task": "seq2seq" | "lm", "config": {...}}``."""
    from slimkit_nlp.lsra.modeling import (
        LiteTransformerConfig,
        LiteTransformerForCausalLM,
        LiteTransformerForConditionalGeneration,
    )

    cls = LiteTransformerForConditionalGeneration if spec["task"] == "seq2seq" else LiteTransformerForCausalLM
    return cls(LiteTransformerConfig(**spec["config"]))


def _notes(args: dict, task: str, cfg: dict, layout: dict) -> list[str]:
    dec = layout["decoder"]
    shared = "shared by encoder, decoder and output" if cfg.get("share_encoder_decoder_embeddings") and \
        cfg["tie_word_embeddings"] else "encoder, decoder and output as in the checkpoint"
    return [f"fairseq arch {args.get('arch', '?')!r} -> {'encoder-decoder' if task == 'seq2seq' else 'language model'}"
            f": d_model {cfg['d_model']}, {dec['layers']} decoder layers, attention {dec['attn_dim']} channels x "
            f"{dec['heads']} heads + {dec['conv_type']} conv {dec['conv_dim']} channels x {dec['conv_heads']} heads "
            f"(kernels {dec['kernels']}, GLU {dec['glu']}), {cfg['norm_position']}-LayerNorm",
            f"original layout: {cfg['position_embedding_type']} positions from {cfg['position_offset']}, embeddings "
            f"x sqrt({cfg['d_model']}), {shared}; padded positions zeroed before the conv branch's input "
            f"projection, as in the original",
            f"token ids are the fairseq dictionary's (bos {cfg['bos_token_id']}, pad {cfg['pad_token_id']}, eos "
            f"{cfg['eos_token_id']}); keep the run's dict.*.txt and BPE codes to tokenise"]


def convert(checkpoint: Checkpoint, *, pad_token_id: int = FAIRSEQ_PAD, eos_token_id: int = FAIRSEQ_EOS,
            bos_token_id: int = FAIRSEQ_BOS) -> Converted:
    """A Lite Transformer fairseq checkpoint -> slimkit model with the original layout (see the module docstring).

    ``pad_token_id`` / ``eos_token_id`` / ``bos_token_id``: the run's dictionary ids (fairseq's defaults 1 / 2 / 0);
    the pad id also sets where positions start (``pad_token_id + 1``).
    """
    if not any(k.startswith(MODEL) for k in checkpoint.tensors):
        raise ConversionError(f"checkpoint {checkpoint.name!r} has no 'model' entry, so it is not a fairseq "
                              f"checkpoint; convert the checkpoint_*.pt file fairseq wrote")
    args = read_args(checkpoint)
    tokens = {"pad_token_id": pad_token_id, "eos_token_id": eos_token_id, "bos_token_id": bos_token_id}
    task, layout, cfg = read_layout(checkpoint.under(MODEL), args, tokens)
    model = build({"task": task, "config": cfg}).eval()
    if model.config.attn_dim != layout["decoder"]["attn_dim"]:
        raise ConversionError(f"the attention branch width {layout['decoder']['attn_dim']} is not a fraction of "
                              f"d_model={cfg['d_model']} slimkit can reproduce; this checkpoint cannot be converted")
    wm = WeightMap(checkpoint, model)
    _map_embeddings(wm, cfg, task)
    if task == "seq2seq":
        _map_stack(wm, model, layout["encoder"], "encoder", "model.encoder", cross=False)
        _map_stack(wm, model, layout["decoder"], "decoder", "model.decoder", cross=True)
    else:
        _map_stack(wm, model, layout["decoder"], "decoder", "model", cross=False)
    _declare_unused(wm)
    return Converted(model=model, build={"task": task, "config": cfg}, weights=wm, notes=_notes(args, task, cfg, layout),
                     details={"task": task, "arch": args.get("arch"), "layout": layout})
