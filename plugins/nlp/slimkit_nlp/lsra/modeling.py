"""Lite Transformer as Hugging Face models: ``LiteTransformerConfig``, ``LiteTransformerForCausalLM``,
``LiteTransformerForConditionalGeneration`` (registered with ``AutoConfig``, ``AutoModelForCausalLM``
and ``AutoModelForSeq2SeqLM`` when this module is imported, which ``import slimkit_nlp`` arranges
as soon as transformers' Auto classes are imported: no remote code).

Each layer is pre-norm: ``x + LSRA(LN(x))`` [``+ CrossAttention(LN(x), encoder)``] ``+ FFN(LN(x))``;
the FFN is flattened (hidden = d_model) unless ``ffn_dim`` says otherwise. Positions are learned.

The original code's layout is a set of options (defaults unchanged; ``slimkit convert lite-transformer-fairseq``
sets them): ``norm_position="post"`` (``LN(x + LSRA(x))``, no final norm), ``position_embedding_type=
"sinusoidal"`` with ``position_offset=padding_idx + 1`` (fairseq's table and numbering), ``scale_embedding``
(token embeddings times sqrt(d_model)), ``share_encoder_decoder_embeddings=False`` with ``encoder_vocab_size``
(separate source and target vocabularies), ``tie_word_embeddings=False`` (own output matrix) and
``conv_padding_order="before_projection"`` (padding zeroed on the conv branch input, as the original does).

Caching: ``config.layer_types`` is ``["hybrid"] * decoder_layers``, so ``DynamicCache(config=config)``
(what ``generate()`` builds) holds, per decoder layer, the keys/values of the attention half and the
last K-1 inputs of the causal convolution half (``LinearAttentionAndFullAttentionLayer``).
Incremental decoding therefore equals the full forward pass.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast, Seq2SeqLMOutput

from slimkit.errors import ConfigError

from ..compat import cache_kwargs, pick_cache, require_dataclass_configs
from .modules import (
    LSRA,
    PADDING_ORDERS,
    ConvBranch,
    CrossAttention,
    DynamicConv,
    FeedForward,
    LightweightConv,
    attention_masks,
)

require_dataclass_configs("slimkit's Lite Transformer")   # before the config class below is declared

DEFAULT_KERNEL_SIZES = (3, 7, 15, 31, 31, 31)


def kernel_sizes_for(n_layers: int, sizes) -> list[int]:
    """Per-layer kernel sizes: ``sizes`` cut to ``n_layers`` (the last one repeated if too short)."""
    sizes = list(sizes or DEFAULT_KERNEL_SIZES)
    return [sizes[min(i, len(sizes) - 1)] for i in range(n_layers)]


@strict
class LiteTransformerConfig(PreTrainedConfig):
    r"""Configuration of a Lite Transformer (LSRA blocks).

    d_model: embedding width. n_head: heads of the attention half (head dim = attention channels / n_head).
    attention_ratio: fraction of the channels that go through attention (0.5 = half and half).
    decoder_layers / encoder_layers: depth (encoder only used by the encoder-decoder model).
    kernel_sizes / encoder_kernel_sizes: conv kernel size per layer (default [3, 7, 15, 31, 31, 31]).
    conv_type: "lightweight" or "dynamic". conv_heads: head groups sharing a kernel. glu: GLU on the
    conv branch input. ffn_dim: FFN hidden size (None = d_model, the flattened FFN).
    cross_attention_heads: heads of the full-width encoder-decoder attention (None: same head dim as n_head).
    norm_position: "pre" (``x + f(LN(x))``, default) or "post" (``LN(x + f(x))``, the original Transformer's).
    final_layer_norm: LayerNorm after the last layer (None: only with pre-norm).
    position_embedding_type: "learned" (a table of max_position_embeddings + position_offset rows) or
    "sinusoidal" (fairseq's sin | cos halves, nothing stored). position_offset: added to every position
    (fairseq numbers positions from padding_idx + 1).
    scale_embedding: multiply token embeddings by sqrt(d_model). share_encoder_decoder_embeddings: one
    embedding for encoder and decoder (default); False gives the encoder its own of encoder_vocab_size rows.
    conv_padding_order: "after_glu" (default: padded sequences give the outputs of the sequence alone) or
    "before_projection" (the original code's order, see ``ConvBranch``).

    The standard transformers names work too: ``hidden_size`` (= d_model), ``num_attention_heads``
    (= n_head) and ``num_hidden_layers`` (= decoder_layers). ``bos_token_id`` / ``eos_token_id`` left
    unset become the last id of the vocabulary (GPT-2's end-of-text convention, so they always fit; for
    byte-level text 255 never occurs in UTF-8); ids outside the vocabulary are refused.
    """

    model_type = "lite_transformer"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_head",
                     "num_hidden_layers": "decoder_layers"}

    vocab_size: int = 256
    d_model: int = 256
    n_head: int = 4
    attention_ratio: float = 0.5
    decoder_layers: int = 6
    encoder_layers: int = 6
    kernel_sizes: list[int] | None = None
    encoder_kernel_sizes: list[int] | None = None
    conv_type: str = "lightweight"
    conv_heads: int = 4
    glu: bool = True
    weight_softmax: bool = True
    ffn_dim: int | None = None
    cross_attention_heads: int | None = None
    activation: str = "relu"
    dropout: float | int = 0.1
    attention_dropout: float | int = 0.0
    weight_dropout: float | int = 0.0
    max_position_embeddings: int = 1024
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    layer_types: list[str] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    decoder_start_token_id: int | None = 0
    norm_position: str = "pre"
    final_layer_norm: bool | None = None
    position_embedding_type: str = "learned"
    position_offset: int = 0
    scale_embedding: bool = False
    share_encoder_decoder_embeddings: bool = True
    encoder_vocab_size: int | None = None
    conv_padding_order: str = "after_glu"

    def __post_init__(self, **kwargs):
        self._take_standard_names(kwargs)
        self._derive_special_tokens()
        self.kernel_sizes = kernel_sizes_for(self.decoder_layers, self.kernel_sizes)
        self.encoder_kernel_sizes = kernel_sizes_for(self.encoder_layers, self.encoder_kernel_sizes)
        if self.ffn_dim is None:
            self.ffn_dim = self.d_model
        if self.final_layer_norm is None:
            self.final_layer_norm = self.norm_position == "pre"
        # one hybrid cache layer per decoder layer: KV of the attention half + conv buffer
        self.layer_types = ["hybrid"] * self.decoder_layers
        self._check()
        super().__post_init__(**kwargs)

    def _take_standard_names(self, kwargs: dict) -> None:
        """Apply ``hidden_size`` / ``num_attention_heads`` / ``num_hidden_layers`` before anything is derived
        from ``d_model`` / ``n_head`` / ``decoder_layers`` (the per-layer kernels and cache layer types)."""
        for standard, own in self.attribute_map.items():
            if standard in kwargs:
                setattr(self, own, kwargs.pop(standard))

    def _derive_special_tokens(self) -> None:
        """Unset BOS/EOS become the vocabulary's last id; an id the embedding cannot hold is refused."""
        last = self.vocab_size - 1
        if self.bos_token_id is None:
            self.bos_token_id = last
        if self.eos_token_id is None:
            self.eos_token_id = last
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            for token in (value if isinstance(value, list) else [value]):
                if token is not None and not 0 <= token < self.vocab_size:
                    raise ConfigError(f"{name}={token} is outside the vocabulary of {self.vocab_size} tokens; "
                                      f"pass an id below {self.vocab_size} or leave it unset (then {last})")

    @property
    def attn_dim(self) -> int:
        """Channels of the attention half."""
        return int(round(self.d_model * self.attention_ratio))

    def _check(self) -> None:
        if self.conv_type not in ("lightweight", "dynamic"):
            raise ConfigError(f"conv_type must be 'lightweight' or 'dynamic', got {self.conv_type!r}")
        if not 0.0 < self.attention_ratio < 1.0:
            raise ConfigError(f"attention_ratio must be between 0 and 1 (exclusive), got {self.attention_ratio}")
        a = self.attn_dim
        if a % self.n_head:
            raise ConfigError(f"attention channels d_model*attention_ratio={a} must be divisible by n_head="
                              f"{self.n_head}; change n_head or d_model")
        if (self.d_model - a) % self.conv_heads:
            raise ConfigError(f"conv channels {self.d_model - a} must be divisible by conv_heads={self.conv_heads}; "
                              "change conv_heads or d_model")
        if self.activation not in ("relu", "gelu", "silu"):
            raise ConfigError(f"activation must be 'relu', 'gelu' or 'silu', got {self.activation!r}")
        if any(k < 1 for k in self.kernel_sizes + self.encoder_kernel_sizes):
            raise ConfigError("kernel sizes must be at least 1; pass e.g. kernel_sizes=[3, 7, 15, 31, 31, 31]")
        self._check_layout()

    def _check_layout(self) -> None:
        """The original-layout options: known values, and an encoder vocabulary only for an encoder of its own."""
        choices = {"norm_position": ("pre", "post"), "position_embedding_type": ("learned", "sinusoidal"),
                   "conv_padding_order": PADDING_ORDERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.position_offset < 0:
            raise ConfigError(f"position_offset must be >= 0 (fairseq uses padding_idx + 1), got {self.position_offset}")
        if self.encoder_vocab_size is not None and self.encoder_vocab_size < 1:
            raise ConfigError(f"encoder_vocab_size must be None (= vocab_size) or >= 1, got {self.encoder_vocab_size}")
        if self.share_encoder_decoder_embeddings and self.encoder_vocab_size not in (None, self.vocab_size):
            raise ConfigError(f"encoder_vocab_size={self.encoder_vocab_size} differs from vocab_size={self.vocab_size}, "
                              f"which needs an encoder embedding of its own; pass "
                              f"share_encoder_decoder_embeddings=False or leave encoder_vocab_size out")

    @property
    def encoder_vocab(self) -> int:
        """Rows of the encoder's token embedding."""
        return self.encoder_vocab_size or self.vocab_size


class LiteTransformerLayer(nn.Module):
    """One layer: LSRA, optional cross-attention, FFN, each a residual block. ``[B, T, d] -> [B, T, d]``.

    Pre-norm (default) ``x + f(LN(x))``; ``norm_position="post"``: ``LN(x + f(x))``.
    """

    def __init__(self, config: LiteTransformerConfig, layer_idx: int, causal: bool, cross: bool = False):
        super().__init__()
        kernels = config.kernel_sizes if causal else config.encoder_kernel_sizes
        self.layer_idx = layer_idx
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.lsra = LSRA(config.d_model, config.attn_dim, config.n_head, kernels[layer_idx], config.conv_type,
                         config.conv_heads, config.glu, causal, config.dropout, config.attention_dropout,
                         config.weight_dropout, config.weight_softmax, config.conv_padding_order)
        self.post_norm = config.norm_position == "post"
        self.cross = None
        if cross:
            heads = config.cross_attention_heads or config.d_model // (config.attn_dim // config.n_head)
            self.norm_cross = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
            self.cross = CrossAttention(config.d_model, heads, config.attention_dropout)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config.d_model, config.ffn_dim, config.activation, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def _residual(self, x, norm: nn.LayerNorm, block) -> torch.Tensor:
        """``x + block(norm(x))`` (pre-norm) or ``norm(x + block(x))`` (post-norm); dropout on the block output."""
        if self.post_norm:
            return norm(x + self.dropout(block(x)))
        return x + self.dropout(block(norm(x)))

    def forward(self, x, attn_mask=None, is_causal=False, padding_mask=None, cache=None,
                memory=None, memory_mask=None, cross_cache=None):
        x = self._residual(x, self.norm1,
                           lambda h: self.lsra(h, attn_mask, is_causal, padding_mask, cache, self.layer_idx))
        if self.cross is not None:
            x = self._residual(x, self.norm_cross,
                               lambda h: self.cross(h, memory, memory_mask, cross_cache, self.layer_idx))
        return self._residual(x, self.norm2, self.ffn)


class LiteTransformerPreTrainedModel(PreTrainedModel):
    config_class = LiteTransformerConfig
    config: LiteTransformerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["LiteTransformerLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]

    def _init_weights(self, module):
        super()._init_weights(module)
        from transformers import initialization as init

        if isinstance(module, LightweightConv):
            init.xavier_uniform_(module.weight)
        if isinstance(module, (LightweightConv, DynamicConv)) and module.bias is not None:
            init.zeros_(module.bias)


class SinusoidalPositions(nn.Module):
    """fairseq's sinusoidal position table, computed (nothing stored): ``positions [B, T] -> [B, T, d]``.

    Row ``p`` is ``[sin(p * f_0) .. sin(p * f_{h-1}), cos(p * f_0) .. cos(p * f_{h-1})]`` with ``h = d // 2``
    and ``f_i = 10000 ** (-i / (h - 1))`` (halves, not interleaved), a zero column appended when ``d`` is
    odd. Computed in float32.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4:
            raise ConfigError(f"sinusoidal positions need d_model >= 4, got {dim}; use learned positions")
        self.dim = dim

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        step = math.log(10000.0) / (half - 1)
        freq = torch.exp(torch.arange(half, dtype=torch.float32, device=positions.device) * -step)
        angle = positions.to(torch.float32)[..., None] * freq
        table = torch.cat([angle.sin(), angle.cos()], dim=-1)
        return F.pad(table, (0, self.dim % 2))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def position_embedding(config: LiteTransformerConfig) -> nn.Module:
    """Learned table (``max_position_embeddings + position_offset`` rows) or sinusoidal positions."""
    if config.position_embedding_type == "sinusoidal":
        return SinusoidalPositions(config.d_model)
    return nn.Embedding(config.max_position_embeddings + config.position_offset, config.d_model)


class LiteTransformerStack(nn.Module):
    """Embeddings + positions + layers + final norm. ``input_ids [B, T] -> hidden [B, T, d]``.

    Token embeddings are scaled by sqrt(d_model) when ``scale_embedding``; position ``p`` (0-based, padding
    not counted) reads row ``p + position_offset``; the final norm is an identity without ``final_layer_norm``.
    """

    def __init__(self, config: LiteTransformerConfig, embed_tokens: nn.Embedding, causal: bool, cross: bool = False):
        super().__init__()
        n = config.decoder_layers if causal else config.encoder_layers
        self.causal = causal
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_positions = position_embedding(config)
        self.position_offset = config.position_offset
        self.layers = nn.ModuleList(LiteTransformerLayer(config, i, causal, cross) for i in range(n))
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.final_layer_norm \
            else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.max_positions = config.max_position_embeddings

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, cache=None,
                memory=None, memory_mask=None, cross_cache=None):
        x = self.embed_tokens(input_ids) * self.embed_scale if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=x.device)[None]
        if int(position_ids.max()) >= self.max_positions:
            raise ConfigError(f"position {int(position_ids.max())} is beyond max_position_embeddings="
                              f"{self.max_positions}; use shorter inputs or a config with more positions")
        x = self.dropout(x + self.embed_positions(position_ids + self.position_offset).to(x.dtype))
        attn_mask, is_causal = attention_masks(T, past, self.causal, attention_mask, x.device)
        padding_mask = attention_mask[:, -T:] if attention_mask is not None else None
        if memory_mask is not None:
            memory_mask = memory_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attn_mask, is_causal, padding_mask, cache, memory, memory_mask, cross_cache)
        return self.norm(x)


def _lm_loss(logits, labels, ignore_index=-100):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=ignore_index)


class LiteTransformerForCausalLM(LiteTransformerPreTrainedModel, GenerationMixin):
    """Decoder-only Lite Transformer language model (causal LSRA layers, tied LM head by default).

    ``forward(input_ids [B, T], attention_mask [B, P+T], past_key_values, labels)`` ->
    ``CausalLMOutputWithPast(logits [B, T, V], loss, past_key_values)``; labels are shifted inside.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LiteTransformerConfig):
        super().__init__(config)
        self.model = LiteTransformerStack(config, nn.Embedding(config.vocab_size, config.d_model), causal=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                past_key_values: Optional[Cache] = None, position_ids: Optional[torch.LongTensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None, labels: Optional[torch.LongTensor] = None,
                use_cache: Optional[bool] = None, logits_to_keep: int = 0, cache: Optional[Cache] = None,
                **kwargs) -> CausalLMOutputWithPast:
        past_key_values = pick_cache(cache, past_key_values)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        cache = past_key_values.self_attention_cache if isinstance(past_key_values, EncoderDecoderCache) \
            else past_key_values
        hidden = self.model(input_ids, attention_mask, position_ids, inputs_embeds, cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = _lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutputWithPast(loss=loss, logits=logits, **cache_kwargs(past_key_values if use_cache else None))


class LiteTransformerModel(LiteTransformerPreTrainedModel):
    """Encoder (bidirectional LSRA, conv padding K//2) and decoder (causal LSRA + full cross-attention)."""

    _tied_weights_keys = {"encoder.embed_tokens.weight": "shared.weight",
                          "decoder.embed_tokens.weight": "shared.weight"}

    def __init__(self, config: LiteTransformerConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        shared_encoder = config.share_encoder_decoder_embeddings
        if not shared_encoder:   # the encoder's own embedding: only the decoder's is tied to ``shared``
            self._tied_weights_keys = {"decoder.embed_tokens.weight": "shared.weight"}
        encoder_embed = self.shared if shared_encoder else nn.Embedding(config.encoder_vocab, config.d_model)
        self.encoder = LiteTransformerStack(config, encoder_embed, causal=False)
        self.decoder = LiteTransformerStack(config, self.shared, causal=True, cross=True)
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, value):
        """The decoder's (target) embedding; also the encoder's when the two are shared."""
        self.shared = self.decoder.embed_tokens = value
        if self.config.share_encoder_decoder_embeddings:
            self.encoder.embed_tokens = value


class _Encoder(nn.Module):
    """What ``generate()`` calls as ``model.get_encoder()(input_ids=..., attention_mask=...)``."""

    def __init__(self, stack: LiteTransformerStack):
        super().__init__()
        self.stack = [stack]  # not registered: no duplicate parameters

    @property
    def main_input_name(self):
        return "input_ids"

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
        return BaseModelOutput(last_hidden_state=self.stack[0](input_ids, attention_mask, inputs_embeds=inputs_embeds))


def shift_right(labels: torch.Tensor, start_id: int, pad_id: Optional[int]) -> torch.Tensor:
    """Decoder inputs from labels: ``[start, y_0, ..., y_{T-2}]`` (``-100`` replaced by ``pad_id``)."""
    out = labels.new_full(labels.shape, start_id)
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill(out == -100, pad_id if pad_id is not None else 0)


class LiteTransformerForConditionalGeneration(LiteTransformerPreTrainedModel, GenerationMixin):
    """Encoder-decoder Lite Transformer for sequence-to-sequence tasks.

    ``forward(input_ids [B, S], attention_mask [B, S], decoder_input_ids [B, T], labels [B, T])``
    -> ``Seq2SeqLMOutput(logits [B, T, V], loss)``; labels are NOT shifted (decoder inputs are built
    from them with ``decoder_start_token_id``), as in BART/T5.
    """

    base_model_prefix = "model"
    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}

    def __init__(self, config: LiteTransformerConfig):
        config.is_encoder_decoder = True
        super().__init__(config)
        self.model = LiteTransformerModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.shared

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def get_encoder(self, modality=None):
        return _Encoder(self.model.encoder)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None,
                decoder_position_ids=None, labels=None, use_cache=None, cache=None, **kwargs) -> Seq2SeqLMOutput:
        past_key_values = pick_cache(cache, past_key_values)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)
        if encoder_outputs is None:
            encoder_outputs = BaseModelOutput(
                last_hidden_state=self.model.encoder(input_ids, attention_mask, inputs_embeds=inputs_embeds))
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        memory = encoder_outputs.last_hidden_state
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        if past_key_values is not None and not isinstance(past_key_values, EncoderDecoderCache):
            past_key_values = EncoderDecoderCache(past_key_values, DynamicCache(config=self.config))
        self_cache = past_key_values.self_attention_cache if past_key_values is not None else None
        hidden = self.model.decoder(decoder_input_ids, decoder_attention_mask, decoder_position_ids,
                                    decoder_inputs_embeds, self_cache, memory, attention_mask, past_key_values)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        return Seq2SeqLMOutput(loss=loss, logits=logits, **cache_kwargs(past_key_values if use_cache else None),
                               encoder_last_hidden_state=memory)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor):
        return shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)


_REGISTERED = False


def register_auto_classes() -> None:
    """Register the config and models with ``AutoConfig``, ``AutoModelForCausalLM`` and ``AutoModelForSeq2SeqLM``."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    AutoConfig.register(LiteTransformerConfig.model_type, LiteTransformerConfig, exist_ok=True)
    AutoModel.register(LiteTransformerConfig, LiteTransformerModel, exist_ok=True)
    AutoModelForCausalLM.register(LiteTransformerConfig, LiteTransformerForCausalLM, exist_ok=True)
    AutoModelForSeq2SeqLM.register(LiteTransformerConfig, LiteTransformerForConditionalGeneration, exist_ok=True)
    _REGISTERED = True


__all__ = ["LiteTransformerConfig", "LiteTransformerForCausalLM", "LiteTransformerForConditionalGeneration",
           "LiteTransformerModel", "LiteTransformerLayer", "register_auto_classes", "kernel_sizes_for",
           "ConvBranch", "SinusoidalPositions"]

register_auto_classes()
