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
    if isinstance(model, GPT2Config):
        return model, None
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) != "gpt2":
        raise UnsupportedModelError(
            f"hat builds a SuperTransformer from GPT-2 models or configs, got {type(model).__name__}; "
            f"pass a transformers GPT2Config, GPT2Model or GPT2LMHeadModel, or build one with "
            f"slimkit_nlp.hat.SuperTransformer(HatSpace(...))")
    base = getattr(model, "transformer", model)
    if not hasattr(base, "h") or not hasattr(base, "wte"):
        raise UnsupportedModelError(f"{type(model).__name__} has no GPT-2 blocks (.h, .wte); pass a GPT2LMHeadModel")
    head = getattr(model, "lm_head", None)
    if head is not None and head.weight is not base.wte.weight and not torch.equal(head.weight, base.wte.weight):
        raise UnsupportedModelError("hat needs GPT-2's output head tied to its token embeddings "
                                    "(tie_word_embeddings=True); this model has a separate lm_head")
    return cfg, base


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
    n = base.wte.weight.shape[1]
    dec = net.decoder
    dec.embed_tokens.weight.copy_(base.wte.weight)
    dec.embed_positions.weight.copy_(base.wpe.weight)
    dec.layer_norm.weight.copy_(base.ln_f.weight)
    dec.layer_norm.bias.copy_(base.ln_f.bias)
    for blk, lay in zip(base.h, dec.layers):
        w, b = blk.attn.c_attn.weight, blk.attn.c_attn.bias  # [n, 3n], [3n]
        for j, proj in enumerate((lay.self_attn.q_proj, lay.self_attn.k_proj, lay.self_attn.v_proj)):
            proj.weight.copy_(w[:, j * n:(j + 1) * n].t())
            proj.bias.copy_(b[j * n:(j + 1) * n])
        lay.self_attn.out_proj.weight.copy_(blk.attn.c_proj.weight.t())
        lay.self_attn.out_proj.bias.copy_(blk.attn.c_proj.bias)
        lay.self_attn_layer_norm.weight.copy_(blk.ln_1.weight)
        lay.self_attn_layer_norm.bias.copy_(blk.ln_1.bias)
        lay.final_layer_norm.weight.copy_(blk.ln_2.weight)
        lay.final_layer_norm.bias.copy_(blk.ln_2.bias)
        lay.ffn.fc1.weight.copy_(blk.mlp.c_fc.weight.t())
        lay.ffn.fc1.bias.copy_(blk.mlp.c_fc.bias)
        lay.ffn.fc2.weight.copy_(blk.mlp.c_proj.weight.t())
        lay.ffn.fc2.bias.copy_(blk.mlp.c_proj.bias)


def apply_hat(model, config: HatConfig) -> SuperTransformer:
    """A SuperTransformer around ``model`` (GPT-2); weights copied when a model is given."""
    cfg, base = _gpt2_parts(model)
    net = SuperTransformer(space_for_gpt2(cfg, config))
    if base is not None:
        load_gpt2_weights(net, base)
        net.train(model.training)
    return net
