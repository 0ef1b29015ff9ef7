"""The weight-shared SuperTransformer.

Every weight is allocated at the space's maximum; a SubTransformer uses front slices
(Linear ``weight[:out, :in]`` and ``bias[:out]``, LayerNorm and embeddings ``[:d]``), a
fixed q/k/v width (head dim = ``qkv_dim / heads``) and the first N layers. Forward
passes run ``F.linear`` on the sliced weights, so gradients flow into the shared tensors.
Parameter names match the exported model (``modeling.py``), which makes export a slice
of each tensor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .modeling import activation, attend, causal_mask, memory_for, padding_mask, split_heads
from .space import HatSpace, SubConfig


class SuperLinear(nn.Linear):
    """``nn.Linear`` at its largest shape; ``forward(x, out_dim)`` uses ``weight[:out, :x.shape[-1]]``."""

    def forward(self, x: torch.Tensor, out_dim: int | None = None) -> torch.Tensor:  # type: ignore[override]
        o = self.out_features if out_dim is None else out_dim
        return F.linear(x, self.weight[:o, : x.shape[-1]], self.bias[:o] if self.bias is not None else None)


class SuperLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        d = x.shape[-1]
        return F.layer_norm(x, (d,), self.weight[:d], self.bias[:d], self.eps)


class SuperEmbedding(nn.Embedding):
    def forward(self, ids: torch.Tensor, dim: int | None = None) -> torch.Tensor:  # type: ignore[override]
        w = self.weight if dim is None else self.weight[:, :dim]
        return F.embedding(ids, w)


class SuperAttention(nn.Module):
    def __init__(self, embed_dim: int, kv_dim: int, qkv_dim: int):
        super().__init__()
        self.q_proj = SuperLinear(embed_dim, qkv_dim)
        self.k_proj = SuperLinear(kv_dim, qkv_dim)
        self.v_proj = SuperLinear(kv_dim, qkv_dim)
        self.out_proj = SuperLinear(qkv_dim, embed_dim)

    def forward(self, x, heads: int, kv=None, mask=None):
        src = x if kv is None else kv
        q = split_heads(self.q_proj(x), heads)
        k = split_heads(self.k_proj(src), heads)
        v = split_heads(self.v_proj(src), heads)
        return self.out_proj(attend(q, k, v, mask), x.shape[-1])


class SuperFFN(nn.Module):
    def __init__(self, embed_dim: int, ffn_dim: int, act: str):
        super().__init__()
        self.act = act
        self.fc1 = SuperLinear(embed_dim, ffn_dim)
        self.fc2 = SuperLinear(ffn_dim, embed_dim)

    def forward(self, x, ffn_dim: int):
        return self.fc2(activation(self.fc1(x, ffn_dim), self.act), x.shape[-1])


class SuperEncoderLayer(nn.Module):
    def __init__(self, space: HatSpace):
        super().__init__()
        d, eps = max(space.encoder_embed_choices), space.layer_norm_eps
        self.self_attn_layer_norm = SuperLayerNorm(d, eps=eps)
        self.self_attn = SuperAttention(d, d, space.qkv_dim)
        self.final_layer_norm = SuperLayerNorm(d, eps=eps)
        self.ffn = SuperFFN(d, max(space.encoder_ffn_choices), space.activation)
        self.dropout = nn.Dropout(space.dropout)

    def forward(self, x, mask, heads: int, ffn_dim: int):
        x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), heads, mask=mask))
        return x + self.dropout(self.ffn(self.final_layer_norm(x), ffn_dim))


class SuperDecoderLayer(nn.Module):
    def __init__(self, space: HatSpace):
        super().__init__()
        d, eps = max(space.decoder_embed_choices), space.layer_norm_eps
        self.self_attn_layer_norm = SuperLayerNorm(d, eps=eps)
        self.self_attn = SuperAttention(d, d, space.qkv_dim)
        self.cross = space.is_encdec
        if self.cross:
            self.encoder_attn_layer_norm = SuperLayerNorm(d, eps=eps)
            self.encoder_attn = SuperAttention(d, max(space.encoder_embed_choices), space.qkv_dim)
        self.final_layer_norm = SuperLayerNorm(d, eps=eps)
        self.ffn = SuperFFN(d, max(space.decoder_ffn_choices), space.activation)
        self.dropout = nn.Dropout(space.dropout)

    def forward(self, x, mask, heads, ffn_dim, memory=None, memory_mask=None, ende_heads=0):
        x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), heads, mask=mask))
        if self.cross:
            x = x + self.dropout(self.encoder_attn(self.encoder_attn_layer_norm(x), ende_heads, kv=memory,
                                                   mask=memory_mask))
        return x + self.dropout(self.ffn(self.final_layer_norm(x), ffn_dim))


class _SuperStack(nn.Module):
    def __init__(self, space: HatSpace, d: int, n: int, layer_cls):
        super().__init__()
        self.embed_tokens = SuperEmbedding(space.vocab_size, d)
        self.embed_positions = SuperEmbedding(space.max_positions, d)
        self.layers = nn.ModuleList(layer_cls(space) for _ in range(n))
        self.layer_norm = SuperLayerNorm(d, eps=space.layer_norm_eps)
        self.dropout = nn.Dropout(space.dropout)

    def embed(self, ids, dim):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.dropout(self.embed_tokens(ids, dim) + self.embed_positions(pos, dim))


class SuperTransformer(nn.Module):
    """Weight-shared SuperTransformer over ``space``.

    ``forward(sub, input_ids, attention_mask=None, decoder_input_ids=None)`` returns logits:
    decoder-only ``[B, T, vocab]`` for ``input_ids``; encoder-decoder ``[B, T_dec, vocab]``
    for ``decoder_input_ids`` given source ``input_ids`` (``attention_mask`` 1 = real token).
    ``sub=None`` runs the one chosen with ``set_sub`` (default: the largest), so
    ``net(input_ids=ids)`` works like a plain model. Weights are initialised N(0, 0.02).
    """

    def __init__(self, space: HatSpace):
        super().__init__()
        self.space = space
        self.active_sub: SubConfig | None = None
        if space.is_encdec:
            self.encoder = _SuperStack(space, max(space.encoder_embed_choices), max(space.encoder_layer_choices),
                                       SuperEncoderLayer)
        self.decoder = _SuperStack(space, max(space.decoder_embed_choices), max(space.decoder_layer_choices),
                                   SuperDecoderLayer)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, sub: SubConfig, input_ids, attention_mask=None) -> list:
        """The last ``max(ende_spans)`` encoder layer outputs, each normalised: list of [B, S, d_enc]."""
        enc = self.encoder
        x = enc.embed(input_ids, sub.encoder_embed_dim)
        mask = padding_mask(attention_mask)
        keep = max(sub.ende_spans)
        outs = []
        for i in range(sub.encoder_layers):
            x = enc.layers[i](x, mask, sub.encoder_heads[i], sub.encoder_ffn_dims[i])
            if i >= sub.encoder_layers - keep:
                outs.append(enc.layer_norm(x))
        return outs

    def decode(self, sub: SubConfig, ids, states=None, encoder_mask=None, attention_mask=None):
        dec = self.decoder
        x = dec.embed(ids, sub.decoder_embed_dim)
        mask = causal_mask(ids.shape[1], 0, attention_mask, ids.device)
        for i in range(sub.decoder_layers):
            memory = memory_mask = None
            if states is not None:
                span = sub.ende_spans[i]
                memory = memory_for(states, span)
                memory_mask = padding_mask(encoder_mask, min(span, len(states)))
            x = dec.layers[i](x, mask, sub.decoder_heads[i], sub.decoder_ffn_dims[i], memory, memory_mask,
                              sub.ende_heads[i] if states is not None else 0)
        x = dec.layer_norm(x)
        return F.linear(x, dec.embed_tokens.weight[:, : sub.decoder_embed_dim])

    def set_sub(self, sub: SubConfig | None) -> "SuperTransformer":
        """Make ``sub`` the SubTransformer that ``forward`` runs when none is passed (None: the largest)."""
        if sub is not None:
            self.space.check(sub)
        self.active_sub = sub
        return self

    def forward(self, sub: SubConfig | None = None, input_ids=None, attention_mask=None, decoder_input_ids=None,
                decoder_attention_mask=None):
        sub = sub or getattr(self, "active_sub", None) or self.space.largest()
        if self.space.is_encdec:
            if decoder_input_ids is None:
                raise ValueError("an encoder-decoder SuperTransformer needs decoder_input_ids")
            states = self.encode(sub, input_ids, attention_mask)
            return self.decode(sub, decoder_input_ids, states, attention_mask, decoder_attention_mask)
        return self.decode(sub, input_ids, attention_mask=attention_mask)

    def export(self, sub: SubConfig | None = None):
        """The standalone Hugging Face model equal to ``sub`` (default: the largest)."""
        from .export import export_subtransformer
        return export_subtransformer(self, sub)
