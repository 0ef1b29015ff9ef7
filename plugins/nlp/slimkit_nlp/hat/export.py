"""Export a SubTransformer from the SuperTransformer as a standalone Hugging Face model.

``export_subtransformer(supernet, sub)`` builds ``HatModelConfig`` from the space and the
SubTransformer, creates the dense model (``modeling.py``; no SuperTransformer code) and
copies the front slice of every shared tensor into it (contiguous copies).
"""
from __future__ import annotations

import torch

from .modeling import HatModelConfig, HatPreTrainedModel, build_model
from .space import HatSpace, SubConfig


def model_config(space: HatSpace, sub: SubConfig, **overrides) -> HatModelConfig:
    """The exported model's config for ``sub`` inside ``space``."""
    kw = dict(vocab_size=space.vocab_size, max_position_embeddings=space.max_positions, qkv_dim=space.qkv_dim,
              decoder_embed_dim=sub.decoder_embed_dim, decoder_layers=sub.decoder_layers,
              decoder_ffn_dims=list(sub.decoder_ffn_dims), decoder_heads=list(sub.decoder_heads),
              activation=space.activation, layer_norm_eps=space.layer_norm_eps, dropout=0.0,
              pad_token_id=space.pad_token_id, bos_token_id=space.bos_token_id, eos_token_id=space.eos_token_id)
    if sub.is_encdec:
        kw.update(encoder_embed_dim=sub.encoder_embed_dim, encoder_layers=sub.encoder_layers,
                  encoder_ffn_dims=list(sub.encoder_ffn_dims), encoder_heads=list(sub.encoder_heads),
                  ende_heads=list(sub.ende_heads), ende_spans=list(sub.ende_spans))
    kw.update(overrides)
    return HatModelConfig(**kw)


def sliced_state_dict(supernet: torch.nn.Module, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """For each name -> shape, the front slice of the SuperTransformer tensor of that name (copied)."""
    full = supernet.state_dict()
    out = {}
    for name, shape in shapes.items():
        if name not in full:
            raise KeyError(f"the SuperTransformer has no tensor {name!r}")
        t = full[name]
        out[name] = t[tuple(slice(0, s) for s in shape)].detach().clone().contiguous()
    return out


def export_subtransformer(supernet, sub: SubConfig | None = None) -> HatPreTrainedModel:
    """A dense ``HatForCausalLM`` / ``HatForConditionalGeneration`` equal to ``sub`` inside ``supernet``
    (eval mode, float32)."""
    space: HatSpace = supernet.space
    sub = sub or space.largest()
    space.check(sub)
    cfg = model_config(space, sub)
    with torch.device("meta"):
        model = build_model(cfg)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(sliced_state_dict(supernet, shapes), assign=True, strict=True)
    return model.eval()


def random_model(space: HatSpace, sub: SubConfig, seed: int = 0) -> HatPreTrainedModel:
    """A dense model for ``sub`` with random N(0, 0.02) weights (for latency measurements)."""
    cfg = model_config(space, sub)
    with torch.device("meta"):
        model = build_model(cfg)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("layer_norm.weight"):
            sd[k] = torch.ones(v.shape)
        elif k.endswith(".bias"):
            sd[k] = torch.zeros(v.shape)
        else:
            sd[k] = torch.randn(v.shape, generator=g) * 0.02
    model.load_state_dict(sd, assign=True, strict=True)
    return model.eval()
