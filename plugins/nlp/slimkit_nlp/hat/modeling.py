"""Standalone Hugging Face models for exported HAT SubTransformers.

Plain dense modules built from their own config (``HatModelConfig``, model type
``slimkit_hat``): no SuperTransformer code is needed at inference. Layers are pre-LN;
attention projects to a fixed q/k/v width with head dim = width / heads (per layer);
in encoder-decoder models each decoder layer attends to the last ``span`` encoder layer
outputs (each normalised by the encoder's final LayerNorm), concatenated along time.
Token embeddings are tied to the output projection. Registered with ``AutoConfig``,
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
    """

    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 256, max_position_embeddings: int = 256, qkv_dim: int = 256,
                 encoder_embed_dim: int = 0, encoder_layers: int = 0, encoder_ffn_dims=None,
                 encoder_heads=None, decoder_embed_dim: int | None = None, decoder_layers: int | None = None,
                 decoder_ffn_dims=None, decoder_heads=None, ende_heads=None, ende_spans=None,
                 activation: str = "gelu", layer_norm_eps: float = 1e-5, dropout: float = 0.0,
                 pad_token_id: int = 0, bos_token_id: int = 1, eos_token_id: int = 2,
                 decoder_start_token_id: int | None = None, **kwargs):
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
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.self_attn = HatAttention(d, d, cfg.qkv_dim, cfg.encoder_heads[i])
        self.final_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ffn = HatFFN(d, cfg.encoder_ffn_dims[i], cfg.activation)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, mask):
        x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), mask=mask))
        return x + self.dropout(self.ffn(self.final_layer_norm(x)))


class HatDecoderLayer(nn.Module):
    def __init__(self, cfg: HatModelConfig, i: int):
        super().__init__()
        d = cfg.decoder_embed_dim
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
        self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), mask=mask, cache=self_cache,
                                            layer_idx=layer_idx))
        if self.cross:
            x = x + self.dropout(self.encoder_attn(self.encoder_attn_layer_norm(x), kv=memory, mask=memory_mask,
                                                   cache=cache if isinstance(cache, EncoderDecoderCache) else None,
                                                   layer_idx=layer_idx, cross=True))
        return x + self.dropout(self.ffn(self.final_layer_norm(x)))


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


class HatEncoder(nn.Module):
    """Embeddings + pre-LN layers; returns the last ``keep_last`` layer outputs normalised by the final LN."""

    main_input_name = "input_ids"

    def __init__(self, cfg: HatModelConfig):
        super().__init__()
        d = cfg.encoder_embed_dim
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d)
        self.embed_positions = nn.Embedding(cfg.max_position_embeddings, d)
        self.layers = nn.ModuleList(HatEncoderLayer(cfg, i) for i in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, attention_mask=None, keep_last: int = 3):
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)
        x = self.dropout(self.embed_tokens(input_ids) + self.embed_positions(pos))
        mask = padding_mask(attention_mask)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, mask)
            if i >= len(self.layers) - keep_last:
                outs.append(self.layer_norm(x))
        return outs


class HatDecoder(nn.Module):
    def __init__(self, cfg: HatModelConfig):
        super().__init__()
        d = cfg.decoder_embed_dim
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d)
        self.embed_positions = nn.Embedding(cfg.max_position_embeddings, d)
        self.layers = nn.ModuleList(HatDecoderLayer(cfg, i) for i in range(cfg.decoder_layers))
        self.layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, attention_mask=None, encoder_states=None, encoder_mask=None, cache=None):
        t = input_ids.shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        pos = torch.arange(past, past + t, device=input_ids.device)
        x = self.dropout(self.embed_tokens(input_ids) + self.embed_positions(pos))
        mask = causal_mask(t, past, attention_mask, input_ids.device)
        for i, layer in enumerate(self.layers):
            memory = memory_mask = None
            if layer.cross:
                memory = memory_for(encoder_states, layer.span) if encoder_states is not None else None
                n = min(layer.span, len(encoder_states)) if encoder_states is not None else layer.span
                memory_mask = padding_mask(encoder_mask, n)
            x = layer(x, mask, memory, memory_mask, cache, i)
        x = self.layer_norm(x)
        return F.linear(x, self.embed_tokens.weight)


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
        return self.decoder.embed_tokens

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
        self.decoder = HatDecoder(config)
        self.keep = max(config.ende_spans) if config.ende_spans else 1
        self.post_init()

    def get_input_embeddings(self):
        return self.decoder.embed_tokens

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
