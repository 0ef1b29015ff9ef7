"""``slimkit.apply(model, "hat")``: a decoder-only SuperTransformer from a GPT-2 model or config.

GPT-2 is pre-LN with learned positions, tied embeddings, biased projections and the
tanh GELU, which is exactly the decoder-only SuperTransformer with ``qkv_dim = n_embd``.
Conv1D weights ``[in, out]`` are transposed into Linear ``[out, in]``; ``c_attn`` is split
into q, k, v. Each sized dimension keeps the model's value as its maximum, so the largest
SubTransformer reproduces the model (and smaller ones start from its front slices).
"""
from __future__ import annotations

import math

import torch

from slimkit import ConfigError, UnsupportedModelError

from .config import HatConfig
from .space import HatSpace
from .supernet import SuperTransformer


def _gpt2_parts(model):
    """(config, GPT2Model or None) for a GPT2Config, GPT2Model or GPT2LMHeadModel."""
    from transformers import GPT2Config

    from slimkit_nlp.families import get_family

    if isinstance(model, GPT2Config):
        return model, None
    fam = get_family("gpt2")
    base = fam.backbone(model) if isinstance(model, torch.nn.Module) else None
    if base is None:
        raise UnsupportedModelError(
            f"hat builds a SuperTransformer from GPT-2 models or configs, got {type(model).__name__}; "
            f"pass a transformers GPT2Config, GPT2Model or GPT2LMHeadModel, or build one with "
            f"slimkit_nlp.hat.SuperTransformer(HatSpace(...))")
    head = getattr(model, "lm_head", None)
    if head is not None and head.weight is not base.wte.weight and not torch.equal(head.weight, base.wte.weight):
        raise UnsupportedModelError("hat needs GPT-2's output head tied to its token embeddings "
                                    "(tie_word_embeddings=True); this model has a separate lm_head")
    return base.config, base


def _choices(given, default, maximum, name):
    vals = sorted(set([v for v in (given or default) if 0 < v <= maximum] + [maximum]))
    if given and any(v > maximum for v in given):
        raise ConfigError(f"hat {name} {max(given)} exceeds the model's {maximum}; "
                          f"the model's size is the largest choice")
    return vals


def space_for_gpt2(cfg, options: HatConfig) -> HatSpace:
    n, L, H = cfg.n_embd, cfg.n_layer, cfg.n_head
    inner = cfg.n_inner or 4 * n
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(cfg, "reorder_and_upcast_attn", False) \
            or not getattr(cfg, "scale_attn_weights", True):
        raise UnsupportedModelError("hat supports GPT-2 with standard attention scaling "
                                    "(scale_attn_weights=True, no inverse-layer-idx scaling)")
    act = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}.get(
        cfg.activation_function)
    if act is None:
        raise UnsupportedModelError(f"hat supports GPT-2 activations gelu_new, gelu and relu, got {cfg.activation_function!r}")
    heads = _choices(options.head_choices, [h for h in (H // 2, H) if h > 0 and n % h == 0], H, "head count")
    bad = [h for h in heads if n % h]
    if bad:
        raise ConfigError(f"head count {bad[0]} does not divide n_embd {n}; choose heads that divide it")
    def tok(v):  # special ids outside a (tiny) vocabulary fall back to its last id
        return min(v, cfg.vocab_size - 1) if isinstance(v, int) else 0

    return HatSpace(
        task="decoder", vocab_size=cfg.vocab_size, max_positions=cfg.n_positions,
        decoder_embed_choices=_choices(options.embed_choices, [n // 2, (3 * n) // 4], n, "embed dim"),
        decoder_layer_choices=_choices(options.layer_choices, list(range(math.ceil(L / 2), L + 1)), L, "layer count"),
        decoder_ffn_choices=_choices(options.ffn_choices, [inner // 4, inner // 2], inner, "FFN dim"),
        decoder_head_choices=heads, qkv_dim=n, activation=act, layer_norm_eps=cfg.layer_norm_epsilon,
        dropout=options.dropout, pad_token_id=tok(cfg.pad_token_id), bos_token_id=tok(cfg.bos_token_id),
        eos_token_id=tok(cfg.eos_token_id))


@torch.no_grad()
def load_gpt2_weights(net: SuperTransformer, base) -> None:
    """Copy a GPT-2 backbone's weights into the decoder-only SuperTransformer (layer by layer, in
    ``nn.Linear`` layout through the ``gpt2`` families adapter)."""
    from slimkit_nlp.families import get_family

    fam = get_family("gpt2")
    dec = net.decoder
    dec.embed_tokens.weight.copy_(base.wte.weight)
    dec.embed_positions.weight.copy_(base.wpe.weight)
    dec.layer_norm.weight.copy_(base.ln_f.weight)
    dec.layer_norm.bias.copy_(base.ln_f.bias)
    for blk, lay in zip(fam.layers(base), dec.layers):
        w = fam.layer_weights(blk)
        att = lay.self_attn
        pairs = ((att.q_proj, w.q), (att.k_proj, w.k), (att.v_proj, w.v), (att.out_proj, w.out),
                 (lay.ffn.fc1, w.ffn_in), (lay.ffn.fc2, w.ffn_out))
        for linear, (weight, bias) in pairs:
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        for norm, src in ((lay.self_attn_layer_norm, w.attn_norm), (lay.final_layer_norm, w.ffn_norm)):
            norm.weight.copy_(src.weight)
            norm.bias.copy_(src.bias)


def apply_hat(model, config: HatConfig) -> SuperTransformer:
    """A SuperTransformer around ``model`` (GPT-2); weights copied when a model is given."""
    cfg, base = _gpt2_parts(model)
    net = SuperTransformer(space_for_gpt2(cfg, config))
    if base is not None:
        load_gpt2_weights(net, base)
        net.train(model.training)
    return net
