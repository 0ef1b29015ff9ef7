"""Standalone Hugging Face models for exported HAT SubTransformers.

Plain dense modules built from their own config (``HatModelConfig``, model type
``slimkit_hat``): no SuperTransformer code is needed at inference. Layers are pre-LN;
attention projects to a fixed q/k/v width with head dim = width / heads (per layer);
in encoder-decoder models each decoder layer attends to the last ``span`` encoder layer
outputs (each normalised by the encoder's final LayerNorm), concatenated along time.
Token embeddings are tied to the output projection.

The original HAT layout (fairseq, ``transformersuper``) is a set of config options, each usable on
its own: ``normalize_before=False`` (post-LN: LayerNorm after each residual add, no final
LayerNorm, so the attended encoder layers are the raw layer outputs), ``position_embedding=
"sinusoidal"`` (fairseq's sinusoidal table: positions count non-padding tokens from
``pad_token_id + 1``, padding gets a zero vector; computed at ``*_position_width`` and front-sliced,
as HAT does inside a SuperTransformer), ``scale_embedding`` (token embeddings times sqrt(width)),
``share_all_embeddings`` (one table for the encoder, the decoder and the output; stored at the larger
of the two widths, each stack uses its front columns) and ``share_decoder_input_output_embed=False``
(a separate ``decoder.output_projection``). Registered with ``AutoConfig``,
``AutoModelForCausalLM`` (decoder-only) and ``AutoModelForSeq2SeqLM`` (encoder-decoder).
This file depends on torch and transformers only. Load an export with the Auto classes after
``import slimkit_nlp`` (which registers this module with them as soon as transformers' Auto classes
are imported) or ``import slimkit_nlp.hat.modeling``; slimkit never passes ``trust_remote_code``
(``save_pretrained`` also copies this file beside the weights with an ``auto_map``, for users who
choose to trust it).

The functional helpers (``attend``, ``activation``) are shared with the SuperTransformer
so that a slice and its export compute exactly the same arithmetic.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast, Seq2SeqLMOutput

MODEL_TYPE = "slimkit_hat"
# transformers 5.24 renamed the ``past_key_values`` argument / output field to ``cache``; accept both
# (this file stands alone in exports, so it does not import slimkit_nlp.compat)
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _pick_cache(cache, past_key_values):
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the KV cache once: as cache= (transformers >= 5.24) or past_key_values=, not both")
    return cache if cache is not None else past_key_values


# ------------------------------------------------------------------------------------
# functional core (shared with the SuperTransformer)
# ------------------------------------------------------------------------------------
def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "gelu_new":
        return F.gelu(x, approximate="tanh")
    return F.gelu(x)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, W] -> [B, heads, T, W / heads]."""
    b, t, w = x.shape
    return x.view(b, t, heads, w // heads).transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention of split heads; ``mask`` is boolean (True = keep),
    broadcastable to [B, H, T, S]. Returns [B, T, H * head_dim]."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    b, h, t, d = out.shape
    return out.transpose(1, 2).reshape(b, t, h * d)


def causal_mask(t: int, past: int, key_padding: torch.Tensor | None, device) -> torch.Tensor | None:
    """Boolean [B or 1, 1, t, past + t] mask: causal plus optional key padding ([B, past + t], 1 = keep)."""
    s = past + t
    mask = None
    if t > 1:
        i = torch.arange(t, device=device)[:, None] + past
        j = torch.arange(s, device=device)[None, :]
        mask = (j <= i)[None, None]
    if key_padding is not None and not bool(key_padding.all()):
        kp = key_padding[:, None, None, -s:].bool()
        mask = kp if mask is None else (mask & kp)
    return mask


def padding_mask(key_padding: torch.Tensor | None, repeat: int = 1) -> torch.Tensor | None:
    """Boolean [B, 1, 1, S * repeat] from a [B, S] padding mask (None when nothing is padded)."""
    if key_padding is None or bool(key_padding.all()):
        return None
    kp = key_padding.bool()
    if repeat > 1:
        kp = kp.repeat(1, repeat)
    return kp[:, None, None, :]


def sublayer(x: torch.Tensor, norm: nn.Module, fn, dropout: nn.Module, normalize_before: bool) -> torch.Tensor:
    """One residual block: pre-LN ``x + dropout(fn(norm(x)))`` or post-LN ``norm(x + dropout(fn(x)))``."""
    if normalize_before:
        return x + dropout(fn(norm(x)))
    return norm(x + dropout(fn(x)))


def fairseq_position_ids(input_ids: torch.Tensor, pad: int, keep: torch.Tensor | None = None,
                         past: int = 0) -> torch.Tensor:
    """fairseq's position numbers [B, T] for the last T of ``past + T`` tokens: real tokens count from
    ``pad + 1``, padding gets ``pad``. ``keep`` ([B, past + T] or, without a past, [B, T]; 1 = real
    token) marks the padding; without it, padding is ``input_ids == pad`` (no past) or nothing (a
    cached step, numbered ``pad + past + 1 ..`` like fairseq's incremental decoding)."""
    t = input_ids.shape[1]
    if keep is not None and keep.shape[1] == past + t:
        mask = keep.long()
    elif past:
        steps = torch.arange(past + 1, past + t + 1, device=input_ids.device) + pad
        return steps.expand(input_ids.shape[0], t)
    else:
        mask = input_ids.ne(pad).long()
    return (torch.cumsum(mask, dim=1) * mask + pad)[:, -t:]


def sinusoidal_positions(positions: torch.Tensor, width: int, pad: int) -> torch.Tensor:
    """fairseq's sinusoidal embedding of ``positions`` [B, T] -> [B, T, width] (float32): the first
    half sin, the second half cos of ``position * 10000^(-i / (width / 2 - 1))``, a zero column for an
    odd width, zeros at the padding position ``pad``."""
    half = width // 2
    step = math.log(10000) / (half - 1)
    freq = torch.exp(torch.arange(half, dtype=torch.float, device=positions.device) * -step)
    angles = positions.float().unsqueeze(-1) * freq
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if width % 2:
        emb = F.pad(emb, (0, 1))
    return emb.masked_fill(positions.eq(pad).unsqueeze(-1), 0.0)


# ------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------
class HatModelConfig(PretrainedConfig):
    """Architecture of one exported SubTransformer (every per-layer list explicit).

    Decoder-only when ``encoder_layers == 0``. ``qkv_dim`` is the q/k/v width of every
    attention; head dim = ``qkv_dim / heads``; ``ende_spans[i]`` = number of last encoder
    layers decoder layer ``i`` attends to.

    The standard transformers names are accepted for the decoder: ``hidden_size`` (=
    ``decoder_embed_dim``), ``num_hidden_layers`` (= ``decoder_layers``) and ``num_attention_heads``
    (every decoder layer's heads); a value that contradicts the explicit one is refused. Special token
    ids must fit the vocabulary: the defaults 0 / 1 / 2 (pad / bos / eos) need ``vocab_size >= 3``.

    Layout (defaults: slimkit's own; see the module docstring for HAT's original): ``normalize_before``
    (pre-LN; False: post-LN without final LayerNorms), ``position_embedding`` (``"learned"`` table of
    ``max_position_embeddings`` rows, or fairseq's ``"sinusoidal"``, no weights),
    ``encoder_position_width`` / ``decoder_position_width`` (sinusoidal: the width the table is
    computed at before front-slicing, 0 = the stack's own), ``scale_embedding`` (token embeddings times
    sqrt(width)), ``share_all_embeddings`` (encoder-decoder only) and
    ``share_decoder_input_output_embed``.
    """

    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 256, max_position_embeddings: int = 256, qkv_dim: int = 256,
                 encoder_embed_dim: int = 0, encoder_layers: int = 0, encoder_ffn_dims=None,
                 encoder_heads=None, decoder_embed_dim: int | None = None, decoder_layers: int | None = None,
                 decoder_ffn_dims=None, decoder_heads=None, ende_heads=None, ende_spans=None,
                 activation: str = "gelu", layer_norm_eps: float = 1e-5, dropout: float = 0.0,
                 pad_token_id: int = 0, bos_token_id: int = 1, eos_token_id: int = 2,
                 decoder_start_token_id: int | None = None, normalize_before: bool = True,
                 position_embedding: str = "learned", encoder_position_width: int = 0,
                 decoder_position_width: int = 0, scale_embedding: bool = False,
                 share_all_embeddings: bool = False, share_decoder_input_output_embed: bool = True, **kwargs):
        decoder_embed_dim = _standard_name(kwargs, "hidden_size", "decoder_embed_dim", decoder_embed_dim, 256)
        decoder_layers = _standard_name(kwargs, "num_hidden_layers", "decoder_layers", decoder_layers, 2)
        heads = kwargs.pop("num_attention_heads", None)
        if decoder_heads is None:
            decoder_heads = [heads or 4] * decoder_layers
        elif heads is not None and heads != max(decoder_heads):
            raise ValueError(f"num_attention_heads={heads} contradicts decoder_heads={list(decoder_heads)} (the "
                             f"largest is {max(decoder_heads)}); pass only one of the two")
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.qkv_dim = qkv_dim
        self.encoder_embed_dim = encoder_embed_dim
        self.encoder_layers = encoder_layers
        self.encoder_ffn_dims = list(encoder_ffn_dims or [])
        self.encoder_heads = list(encoder_heads or [])
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_layers = decoder_layers
        self.decoder_ffn_dims = list(decoder_ffn_dims or [4 * decoder_embed_dim] * decoder_layers)
        self.decoder_heads = list(decoder_heads)
        self.ende_heads = list(ende_heads or [])
        self.ende_spans = list(ende_spans or [])
        self.activation = activation
        self.layer_norm_eps = layer_norm_eps
        self.dropout = dropout
        self.hidden_size = decoder_embed_dim
        self.num_hidden_layers = decoder_layers
        self.num_attention_heads = max(self.decoder_heads) if self.decoder_heads else 1
        self.normalize_before = bool(normalize_before)
        self.position_embedding = position_embedding
        self.encoder_position_width = int(encoder_position_width)
        self.decoder_position_width = int(decoder_position_width)
        self.scale_embedding = bool(scale_embedding)
        self.share_all_embeddings = bool(share_all_embeddings)
        self.share_decoder_input_output_embed = bool(share_decoder_input_output_embed)
        _check_layout(self)
        is_ed = encoder_layers > 0
        start = decoder_start_token_id if decoder_start_token_id is not None else (bos_token_id if is_ed else None)
        _check_token_ids(vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, decoder_start_token_id=start)
        kwargs.pop("is_encoder_decoder", None)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         decoder_start_token_id=start, is_encoder_decoder=is_ed, **kwargs)


def _standard_name(kwargs: dict, standard: str, own: str, value, default):
    """``value`` of ``own``, else the standard transformers name from ``kwargs``, else ``default``;
    both given and different is refused."""
    other = kwargs.pop(standard, None)
    if value is None:
        return other if other is not None else default
    if other is not None and other != value:
        raise ValueError(f"{standard}={other} contradicts {own}={value}; pass only one of the two")
    return value


POSITION_EMBEDDINGS = ("learned", "sinusoidal")


def _check_layout(cfg: "HatModelConfig") -> None:
    """Refuse layout options that contradict each other or the sizes (one sentence with the fix)."""
    if cfg.position_embedding not in POSITION_EMBEDDINGS:
        raise ValueError(f"position_embedding={cfg.position_embedding!r} is not one of {POSITION_EMBEDDINGS}; "
                         f"use 'learned' (slimkit's default) or 'sinusoidal' (fairseq's)")
    if cfg.share_all_embeddings and cfg.encoder_layers <= 0:
        raise ValueError("share_all_embeddings=True needs an encoder (encoder_layers > 0); a decoder-only model "
                         "shares its input and output embedding with share_decoder_input_output_embed=True")
    widths = (("encoder_position_width", cfg.encoder_position_width, cfg.encoder_embed_dim),
              ("decoder_position_width", cfg.decoder_position_width, cfg.decoder_embed_dim))
    for name, width, own in widths:
        if width and (width < own or cfg.position_embedding != "sinusoidal"):
            raise ValueError(f"{name}={width} needs position_embedding='sinusoidal' and at least the stack's "
                             f"width {own}; leave it 0 to compute the positions at the stack's own width")
        if cfg.position_embedding == "sinusoidal" and 0 < (width or own) < 4:
            raise ValueError(f"sinusoidal positions need a width of at least 4 (two sin and two cos "
                             f"frequencies), got {width or own}; raise {name} or the stack's width")


def _check_token_ids(vocab_size: int, **ids) -> None:
    """Refuse special token ids the embedding cannot hold (one sentence with the fix)."""
    for name, value in ids.items():
        for token in (value if isinstance(value, (list, tuple)) else [value]):
            if token is not None and not 0 <= int(token) < vocab_size:
                raise ValueError(f"{name}={token} is outside the vocabulary of {vocab_size} tokens; "
                                 f"pass an id below {vocab_size}")


# ------------------------------------------------------------------------------------
# modules
# ------------------------------------------------------------------------------------
class HatAttention(nn.Module):
    """q/k/v projections to ``qkv_dim``, ``heads`` heads, output back to ``embed_dim``."""

    def __init__(self, embed_dim: int, kv_dim: int, qkv_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(embed_dim, qkv_dim)
        self.k_proj = nn.Linear(kv_dim, qkv_dim)
        self.v_proj = nn.Linear(kv_dim, qkv_dim)
        self.out_proj = nn.Linear(qkv_dim, embed_dim)

    def forward(self, x, kv=None, mask=None, cache=None, layer_idx: int = 0, cross: bool = False):
        q = split_heads(self.q_proj(x), self.heads)
        if cross and cache is not None and cache.is_updated.get(layer_idx):
            layer = cache.cross_attention_cache.layers[layer_idx]
            k, v = layer.keys, layer.values
        else:
            src = x if kv is None else kv
            k = split_heads(self.k_proj(src), self.heads)
            v = split_heads(self.v_proj(src), self.heads)
            if cache is not None:
                if cross:
                    k, v = cache.cross_attention_cache.update(k, v, layer_idx)
                    cache.is_updated[layer_idx] = True
                else:
                    k, v = cache.update(k, v, layer_idx)
        return self.out_proj(attend(q, k, v, mask))


class HatFFN(nn.Module):
    def __init__(self, embed_dim: int, ffn_dim: int, act: str):
        super().__init__()
        self.act = act
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)

    def forward(self, x):
        return self.fc2(activation(self.fc1(x), self.act))


class HatEncoderLayer(nn.Module):
    def __init__(self, cfg: HatModelConfig, i: int):
        super().__init__()
        d = cfg.encoder_embed_dim
        self.normalize_before = getattr(cfg, "normalize_before", True)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.self_attn = HatAttention(d, d, cfg.qkv_dim, cfg.encoder_heads[i])
        self.final_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ffn = HatFFN(d, cfg.encoder_ffn_dims[i], cfg.activation)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, mask):
        pre = self.normalize_before
        x = sublayer(x, self.self_attn_layer_norm, lambda h: self.self_attn(h, mask=mask), self.dropout, pre)
        return sublayer(x, self.final_layer_norm, self.ffn, self.dropout, pre)


class HatDecoderLayer(nn.Module):
    def __init__(self, cfg: HatModelConfig, i: int):
        super().__init__()
        d = cfg.decoder_embed_dim
        self.normalize_before = getattr(cfg, "normalize_before", True)
        self.cross = cfg.encoder_layers > 0
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.self_attn = HatAttention(d, d, cfg.qkv_dim, cfg.decoder_heads[i])
        if self.cross:
            self.span = cfg.ende_spans[i]
            self.encoder_attn_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
            self.encoder_attn = HatAttention(d, cfg.encoder_embed_dim, cfg.qkv_dim, cfg.ende_heads[i])
        self.final_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ffn = HatFFN(d, cfg.decoder_ffn_dims[i], cfg.activation)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, memory=None, memory_mask=None, cache=None, layer_idx=0):
        pre = self.normalize_before
        self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        x = sublayer(x, self.self_attn_layer_norm,
                     lambda h: self.self_attn(h, mask=mask, cache=self_cache, layer_idx=layer_idx), self.dropout, pre)
        if self.cross:
            cross_cache = cache if isinstance(cache, EncoderDecoderCache) else None
            x = sublayer(x, self.encoder_attn_layer_norm,
                         lambda h: self.encoder_attn(h, kv=memory, mask=memory_mask, cache=cross_cache,
                                                     layer_idx=layer_idx, cross=True), self.dropout, pre)
        return sublayer(x, self.final_layer_norm, self.ffn, self.dropout, pre)


def memory_for(layer_outputs: list, span: int) -> torch.Tensor:
    """Concatenate the last ``span`` normalised encoder layer outputs along time."""
    span = min(span, len(layer_outputs))
    return torch.cat(layer_outputs[-span:], dim=1) if span > 1 else layer_outputs[-1]


class HatPreTrainedModel(PreTrainedModel):
    config_class = HatModelConfig
    base_model_prefix = "hat"
    _supports_sdpa = True
    _no_split_modules = ["HatEncoderLayer", "HatDecoderLayer"]

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _layout(cfg: HatModelConfig, name: str, default):
    """A layout option of ``cfg`` (configs saved before the option existed take the old behaviour)."""
    return getattr(cfg, name, default)


class _HatStack(nn.Module):
    """Token and position embeddings of one stack (encoder or decoder) of width ``width``.

    ``embed_tokens`` (own table, ``table_width`` columns, the front ``width`` used) or ``shared`` (the
    encoder's table, not registered here so it is saved once); ``embed_positions`` for learned positions.
    """

    def _init_embeddings(self, cfg: HatModelConfig, width: int, position_width: int, table_width: int,
                         shared: nn.Embedding | None = None) -> None:
        self.width = width
        self.pad = cfg.pad_token_id
        self.sinusoidal = _layout(cfg, "position_embedding", "learned") == "sinusoidal"
        self.position_width = position_width or width
        self.embed_scale = math.sqrt(width) if _layout(cfg, "scale_embedding", False) else 1.0
        if shared is None:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, table_width)
        else:
            self._shared = (shared,)   # a tuple: not a submodule, so its weight is saved under the encoder only
        if not self.sinusoidal:
            self.embed_positions = nn.Embedding(cfg.max_position_embeddings, width)
        self.dropout = nn.Dropout(cfg.dropout)

    @property
    def token_embedding(self) -> nn.Embedding:
        shared = getattr(self, "_shared", None)
        return shared[0] if shared else self.embed_tokens

    def token_weight(self) -> torch.Tensor:
        """The token table's front ``width`` columns: [vocab, width]."""
        w = self.token_embedding.weight
        return w if w.shape[1] == self.width else w[:, : self.width]

    def embed(self, ids: torch.Tensor, keep: torch.Tensor | None = None, past: int = 0) -> torch.Tensor:
        """[B, T] token ids -> [B, T, width]: scaled token embeddings plus positions, then dropout.
        ``keep`` ([B, past + T], 1 = real token) and ``past`` (cached tokens) number the positions."""
        x = F.embedding(ids, self.token_weight())
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        if self.sinusoidal:
            pos = fairseq_position_ids(ids, self.pad, keep, past)
            x = x + sinusoidal_positions(pos, self.position_width, self.pad)[..., : self.width].to(x.dtype)
        else:
            x = x + self.embed_positions(torch.arange(past, past + ids.shape[1], device=ids.device))
        return self.dropout(x)


class HatEncoder(_HatStack):
    """Embeddings + layers; returns the last ``keep_last`` layer outputs (pre-LN: each normalised by the
    final LayerNorm; post-LN: as the layers give them, there is no final LayerNorm)."""

    main_input_name = "input_ids"

    def __init__(self, cfg: HatModelConfig):
        super().__init__()
        d = cfg.encoder_embed_dim
        table = max(d, cfg.decoder_embed_dim) if _layout(cfg, "share_all_embeddings", False) else d
        self._init_embeddings(cfg, d, _layout(cfg, "encoder_position_width", 0), table)
        self.layers = nn.ModuleList(HatEncoderLayer(cfg, i) for i in range(cfg.encoder_layers))
        pre = _layout(cfg, "normalize_before", True)
        self.layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if pre else None

    def forward(self, input_ids, attention_mask=None, keep_last: int = 3):
        x = self.embed(input_ids, attention_mask)
        mask = padding_mask(attention_mask)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, mask)
            if i >= len(self.layers) - keep_last:
                outs.append(self.layer_norm(x) if self.layer_norm is not None else x)
        return outs


class HatDecoder(_HatStack):
    """Embeddings + layers + output projection -> logits [B, T, vocab]. ``shared``: the encoder's token
    table (``share_all_embeddings``)."""

    def __init__(self, cfg: HatModelConfig, shared: nn.Embedding | None = None):
        super().__init__()
        d = cfg.decoder_embed_dim
        self._init_embeddings(cfg, d, _layout(cfg, "decoder_position_width", 0), d, shared)
        self.layers = nn.ModuleList(HatDecoderLayer(cfg, i) for i in range(cfg.decoder_layers))
        pre = _layout(cfg, "normalize_before", True)
        self.layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if pre else None
        tied = _layout(cfg, "share_decoder_input_output_embed", True)
        self.output_projection = None if tied else nn.Linear(d, cfg.vocab_size, bias=False)

    def forward(self, input_ids, attention_mask=None, encoder_states=None, encoder_mask=None, cache=None):
        t = input_ids.shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        x = self.embed(input_ids, attention_mask, past)
        mask = causal_mask(t, past, attention_mask, input_ids.device)
        for i, layer in enumerate(self.layers):
            memory = memory_mask = None
            if layer.cross:
                memory = memory_for(encoder_states, layer.span) if encoder_states is not None else None
                n = min(layer.span, len(encoder_states)) if encoder_states is not None else layer.span
                memory_mask = padding_mask(encoder_mask, n)
            x = layer(x, mask, memory, memory_mask, cache, i)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        if self.output_projection is not None:
            return self.output_projection(x)
        return F.linear(x, self.token_weight())


def _lm_loss(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


class HatForCausalLM(HatPreTrainedModel, GenerationMixin):
    """Decoder-only exported SubTransformer: ``logits [B, T, vocab]``; ``labels`` = ``input_ids``
    (shifted inside) give the mean next-token cross-entropy."""

    def __init__(self, config: HatModelConfig):
        super().__init__(config)
        self.decoder = HatDecoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.decoder.token_embedding

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=None,
                labels=None, cache=None, **kwargs):
        cache = _pick_cache(cache, past_key_values)
        if use_cache and cache is None:
            cache = DynamicCache()
        logits = self.decoder(input_ids, attention_mask, cache=cache)
        loss = _lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})


class _EncoderWrapper(nn.Module):
    """``get_encoder()`` for generate(): returns the kept encoder layer outputs stacked."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def main_input_name(self):
        return "input_ids"

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        outs = self.model.encoder(input_ids, attention_mask)
        return BaseModelOutput(last_hidden_state=outs[-1], hidden_states=tuple(outs))


class HatForConditionalGeneration(HatPreTrainedModel, GenerationMixin):
    """Encoder-decoder exported SubTransformer. ``labels`` are the decoder targets
    (``decoder_input_ids`` default to labels shifted right with the start token)."""

    def __init__(self, config: HatModelConfig):
        super().__init__(config)
        self.encoder = HatEncoder(config)
        shared = self.encoder.embed_tokens if _layout(config, "share_all_embeddings", False) else None
        self.decoder = HatDecoder(config, shared)
        self.keep = max(config.ende_spans) if config.ende_spans else 1
        self.post_init()

    def get_input_embeddings(self):
        return self.decoder.token_embedding

    def get_encoder(self, *args, **kwargs):
        return _EncoderWrapper(self)

    def encode(self, input_ids, attention_mask=None) -> list:
        return self.encoder(input_ids, attention_mask, keep_last=self.keep)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                past_key_values=None, use_cache=None, labels=None, decoder_attention_mask=None, cache=None,
                **kwargs):
        if encoder_outputs is None:
            states = self.encode(input_ids, attention_mask)
        elif isinstance(encoder_outputs, (list, tuple)) and not isinstance(encoder_outputs, BaseModelOutput):
            states = list(encoder_outputs[1] if len(encoder_outputs) > 1 and isinstance(encoder_outputs[1], tuple)
                          else encoder_outputs)
        else:
            states = list(encoder_outputs.hidden_states) if encoder_outputs.hidden_states is not None \
                else [encoder_outputs.last_hidden_state]
        if decoder_input_ids is not None:
            states = _match_batch(states, decoder_input_ids.shape[0])
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels to HatForConditionalGeneration")
            start = torch.full_like(labels[:, :1], self.config.decoder_start_token_id)
            decoder_input_ids = torch.cat([start, labels[:, :-1].clamp_min(0)], dim=1)
        cache = _pick_cache(cache, past_key_values)
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        logits = self.decoder(decoder_input_ids, decoder_attention_mask, states, attention_mask, cache)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return Seq2SeqLMOutput(loss=loss, logits=logits, **{_CACHE_FIELD: cache},
                               encoder_last_hidden_state=states[-1])


def _match_batch(states: list, batch: int) -> list:
    """Repeat each [B, S, d] encoder output ``batch / B`` times along the batch (generate() expands its
    inputs for beams or several return sequences but not the tuple of kept encoder layer outputs)."""
    have = states[0].shape[0] if states else batch
    if have == batch or batch % have:
        return states
    return [s.repeat_interleave(batch // have, dim=0) for s in states]


def build_model(config: HatModelConfig) -> HatPreTrainedModel:
    """The exported model class for ``config`` (encoder-decoder or decoder-only)."""
    cls = HatForConditionalGeneration if config.encoder_layers > 0 else HatForCausalLM
    return cls(config)


def _register() -> None:
    # save_pretrained copies this file next to the weights and writes ``auto_map``, so
    # ``AutoModel*.from_pretrained(dir, trust_remote_code=True)`` works without slimkit installed.
    HatModelConfig.register_for_auto_class()
    HatForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    HatForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
    try:
        AutoConfig.register(MODEL_TYPE, HatModelConfig)
    except ValueError:
        pass
    for auto, cls in ((AutoModelForCausalLM, HatForCausalLM), (AutoModelForSeq2SeqLM, HatForConditionalGeneration)):
        try:
            auto.register(HatModelConfig, cls)
        except ValueError:
            pass


_register()
