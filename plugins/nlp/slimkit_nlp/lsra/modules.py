"""Long-Short Range Attention (LSRA) building blocks (Lite Transformer, Wu et al., ICLR 2020).

Shapes: ``B`` batch, ``T`` new positions, ``P`` cached positions, ``C`` channels.
Every module takes and returns ``[B, T, C]`` tensors (channels last).

* ``LightweightConv``: depthwise 1-D conv; kernel ``[heads, K]`` softmax-normalised over K and
  shared by the ``C / heads`` channels of each head group.
* ``DynamicConv``: like the lightweight conv, but the kernel of every position is predicted from
  that position's input (``Linear(C -> heads * K)``), softmax over K.
* ``ConvBranch``: ``Linear(C -> 2C) + GLU`` (or ``Linear(C -> C)``) -> padding zeroed -> conv -> ``Linear(C -> C)``;
  ``padding_order="before_projection"`` zeroes the padding on the branch input instead (the original code's order).
* ``SelfAttention`` / ``CrossAttention``: multi-head attention with a Hugging Face KV cache.
* ``LSRA``: splits the channels, attention on the first ``attn_dim``, conv branch on the rest, concatenates.

Causal convs (decoders) pad K-1 on the left; for incremental decoding they read the last K-1
inputs of the branch from the cache (``update_conv_buffer``), so decoding one token at a time
equals the full forward pass.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.errors import ConfigError, ShapeError

CONV_BUFFER_ATTR = "_slimkit_lsra_conv"


def update_conv_buffer(cache, layer_idx: int, x: torch.Tensor, keep: int) -> torch.Tensor:
    """Append ``x`` ``[B, C, T]`` to the layer's conv buffer; return ``[B, C, P + T]`` (P previous inputs).

    Uses the hybrid cache layers of ``transformers`` (``LinearAttentionAndFullAttentionLayer``,
    what ``DynamicCache(config=LiteTransformerConfig)`` builds: conv state + KV in one layer)
    when the cache has them; otherwise (e.g. a converted GPT-2 with a plain ``DynamicCache``)
    keeps the buffer in a dict on the cache object. Only the last ``keep`` inputs are kept.
    """
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    layers = getattr(cache, "layers", None)
    if layers is not None and layer_idx < len(layers) and isinstance(layers[layer_idx], LinearAttentionCacheLayerMixin):
        return cache.update_conv_state(x, layer_idx, conv_kernel_size=keep)
    store = cache.__dict__.setdefault(CONV_BUFFER_ATTR, {})
    prev = store.get(layer_idx)
    full = x if prev is None else torch.cat([prev, x], dim=-1)
    store[layer_idx] = full[..., -keep:]
    return full


def _conv_padding(kernel_size: int, causal: bool, past: int) -> tuple[int, int]:
    if causal:
        return max(kernel_size - 1 - past, 0), 0
    return kernel_size // 2, kernel_size - 1 - kernel_size // 2


class _HeadGroupConv(nn.Module):
    """Shared settings of the depthwise convolutions whose kernels are shared by ``heads`` channel groups."""

    def __init__(self, channels: int, kernel_size: int, heads: int, causal: bool,
                 weight_softmax: bool, weight_dropout: float):
        super().__init__()
        if channels % heads:
            raise ShapeError(f"conv channels ({channels}) must be divisible by conv heads ({heads}); change conv_heads")
        self.channels, self.kernel_size, self.heads, self.causal = channels, kernel_size, heads, causal
        self.weight_softmax, self.weight_dropout = weight_softmax, weight_dropout

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, heads={self.heads}, causal={self.causal}"


class LightweightConv(_HeadGroupConv):
    """Depthwise conv with a softmax-normalised kernel shared across head groups. ``[B, T, C] -> [B, T, C]``.

    Channel ``c`` uses kernel row ``c // (C / heads)``. ``causal``: output ``t`` reads inputs
    ``t-K+1 .. t`` only; otherwise the window is centred (padding ``K // 2``).
    """

    def __init__(self, channels: int, kernel_size: int, heads: int = 4, causal: bool = True,
                 weight_softmax: bool = True, weight_dropout: float = 0.0, bias: bool = False):
        super().__init__(channels, kernel_size, heads, causal, weight_softmax, weight_dropout)
        self.weight = nn.Parameter(torch.empty(heads, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        nn.init.xavier_uniform_(self.weight)

    def kernel(self) -> torch.Tensor:
        """Per-channel kernel ``[C, 1, K]``."""
        w = self.weight.softmax(-1) if self.weight_softmax else self.weight
        w = F.dropout(w, self.weight_dropout, self.training)
        return w.repeat_interleave(self.channels // self.heads, dim=0).unsqueeze(1)

    def forward(self, x: torch.Tensor, past: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` ``[B, T, C]``; ``past`` ``[B, C, P]`` previous inputs (causal decoding) or None."""
        T = x.shape[1]
        xt = x.transpose(1, 2)
        p = 0
        if past is not None and past.shape[-1]:
            xt, p = torch.cat([past.to(xt.dtype), xt], dim=-1), past.shape[-1]
        left, right = _conv_padding(self.kernel_size, self.causal, p)
        out = F.conv1d(F.pad(xt, (left, right)), self.kernel(), groups=self.channels)[..., -T:]
        out = out.transpose(1, 2)
        return out + self.bias if self.bias is not None else out


class DynamicConv(_HeadGroupConv):
    """Depthwise conv whose kernel ``[heads, K]`` is predicted at every position from its input.

    ``[B, T, C] -> [B, T, C]``; kernel = softmax(``Linear(C -> heads*K)(x_t)``) over K, shared by the
    ``C / heads`` channels of each head group.
    """

    def __init__(self, channels: int, kernel_size: int, heads: int = 4, causal: bool = True,
                 weight_softmax: bool = True, weight_dropout: float = 0.0, bias: bool = False):
        super().__init__(channels, kernel_size, heads, causal, weight_softmax, weight_dropout)
        self.weight_linear = nn.Linear(channels, heads * kernel_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor, past: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, C = x.shape
        H, K = self.heads, self.kernel_size
        w = self.weight_linear(x).view(B, T, H, K)
        w = w.softmax(-1) if self.weight_softmax else w
        w = F.dropout(w, self.weight_dropout, self.training)
        xt = x.transpose(1, 2)
        p = 0
        if past is not None and past.shape[-1]:
            xt, p = torch.cat([past.to(xt.dtype), xt], dim=-1), past.shape[-1]
        left, right = _conv_padding(K, self.causal, p)
        win = F.pad(xt, (left, right)).unfold(-1, K, 1)[..., -T:, :]  # [B, C, T, K]
        win = win.reshape(B, H, C // H, T, K)
        out = torch.einsum("bhctk,bthk->bthc", win, w).reshape(B, T, C)
        return out + self.bias if self.bias is not None else out


PADDING_ORDERS = ("after_glu", "before_projection")


class ConvBranch(nn.Module):
    """The short-range half: ``Linear (+GLU) -> zero padding positions -> conv -> Linear``. ``[B,T,C] -> [B,T,C]``.

    ``padding_order``: ``"after_glu"`` (default) zeroes padded positions right before the conv, so a
    padded sequence gives the same outputs as the sequence alone; ``"before_projection"`` zeroes them on
    the branch input, before ``Linear (+GLU)``, as Lite Transformer's code does (the conv then reads the
    projection's bias, passed through the GLU, at padded positions next to real tokens).
    """

    def __init__(self, channels: int, kernel_size: int, conv_type: str = "lightweight", heads: int = 4,
                 glu: bool = True, causal: bool = True, weight_softmax: bool = True,
                 weight_dropout: float = 0.0, dropout: float = 0.0, padding_order: str = "after_glu"):
        super().__init__()
        if padding_order not in PADDING_ORDERS:
            raise ConfigError(f"padding_order must be 'after_glu' or 'before_projection' (the original code's order), "
                              f"got {padding_order!r}")
        self.channels, self.kernel_size, self.glu, self.causal = channels, kernel_size, glu, causal
        self.padding_order = padding_order
        self.in_proj = nn.Linear(channels, 2 * channels if glu else channels)
        conv_cls = {"lightweight": LightweightConv, "dynamic": DynamicConv}[conv_type]
        self.conv = conv_cls(channels, kernel_size, heads, causal, weight_softmax, weight_dropout)
        self.out_proj = nn.Linear(channels, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, cache=None,
                layer_idx: int = 0) -> torch.Tensor:
        """``padding_mask`` ``[B, T]`` (1 = token, 0 = padding) for the new positions; ``cache``
        (causal only) holds the last K-1 conv inputs of this layer."""
        mask_input = padding_mask is not None and self.padding_order == "before_projection"
        if mask_input:
            x = x * padding_mask[..., None].to(x.dtype)
        h = self.in_proj(x)
        h = F.glu(h, dim=-1) if self.glu else h
        if padding_mask is not None and not mask_input:
            h = h * padding_mask[..., None].to(h.dtype)
        past = None
        if cache is not None and self.causal and self.kernel_size > 1:
            full = update_conv_buffer(cache, layer_idx, h.transpose(1, 2), self.kernel_size - 1)
            past = full[..., : full.shape[-1] - h.shape[1]]
        return self.out_proj(self.dropout(self.conv(h, past)))


def _attend(q, k, v, attn_mask, is_causal, dropout_p, training):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None,
                                          dropout_p=dropout_p if training else 0.0)


class SelfAttention(nn.Module):
    """Multi-head self-attention on ``C`` channels (q/k/v/out ``Linear(C -> C)``), KV cache via ``cache.update``.

    ``attn_mask``: bool ``[B or 1, 1, T, P+T]`` (True = may attend) or None with ``is_causal``.
    """

    def __init__(self, channels: int, heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if channels % heads:
            raise ShapeError(f"attention channels ({channels}) must be divisible by heads ({heads}); change n_head")
        self.channels, self.heads, self.head_dim, self.dropout = channels, heads, channels // heads, dropout
        self.q_proj = nn.Linear(channels, channels, bias=bias)
        self.k_proj = nn.Linear(channels, channels, bias=bias)
        self.v_proj = nn.Linear(channels, channels, bias=bias)
        self.out_proj = nn.Linear(channels, channels, bias=bias)

    def _heads(self, x):
        return x.view(*x.shape[:2], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, attn_mask=None, is_causal: bool = False, cache=None, layer_idx: int = 0):
        B, T, _ = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        out = _attend(q, k, v, attn_mask, is_causal and k.shape[2] == T, self.dropout, self.training)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, self.channels))


class CrossAttention(SelfAttention):
    """Encoder-decoder attention (full width); keys/values of the encoder output are cached once."""

    def forward(self, x, memory, memory_mask=None, cache=None, layer_idx: int = 0):
        B, T, _ = x.shape
        q = self._heads(self.q_proj(x))
        layer = cache.cross_attention_cache.layers[layer_idx] if cache is not None and \
            layer_idx < len(cache.cross_attention_cache.layers) else None
        if cache is not None and cache.is_updated.get(layer_idx):
            k, v = layer.keys, layer.values
        else:
            k, v = self._heads(self.k_proj(memory)), self._heads(self.v_proj(memory))
            if cache is not None:
                k, v = cache.cross_attention_cache.update(k, v, layer_idx)
                cache.is_updated[layer_idx] = True
        out = _attend(q, k, v, memory_mask, False, self.dropout, self.training)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, self.channels))


class LSRA(nn.Module):
    """Long-Short Range Attention: ``[B, T, d] -> [B, T, d]``.

    Channels ``[:attn_dim]`` go through multi-head attention (long range), channels ``[attn_dim:]``
    through the convolution branch (short range); the two outputs are concatenated in that order.
    """

    def __init__(self, d_model: int, attn_dim: int, heads: int, kernel_size: int, conv_type: str = "lightweight",
                 conv_heads: int = 4, glu: bool = True, causal: bool = True, dropout: float = 0.0,
                 attention_dropout: float = 0.0, weight_dropout: float = 0.0, weight_softmax: bool = True,
                 padding_order: str = "after_glu"):
        super().__init__()
        if not 0 < attn_dim < d_model:
            raise ShapeError(f"attention channels must be between 0 and d_model={d_model}, got {attn_dim}")
        self.d_model, self.attn_dim, self.conv_dim, self.causal = d_model, attn_dim, d_model - attn_dim, causal
        self.attn = SelfAttention(attn_dim, heads, attention_dropout)
        self.conv = ConvBranch(d_model - attn_dim, kernel_size, conv_type, conv_heads, glu, causal,
                               weight_softmax, weight_dropout, dropout, padding_order)

    def forward(self, x, attn_mask=None, is_causal: Optional[bool] = None, padding_mask=None, cache=None,
                layer_idx: int = 0):
        """``x`` ``[B, T, d]``; ``attn_mask`` bool ``[B or 1, 1, T, P+T]`` or None; ``is_causal`` (default:
        the block's ``causal`` when no mask is given); ``padding_mask`` ``[B, T]``; ``cache`` a HF cache."""
        if is_causal is None:
            is_causal = self.causal and attn_mask is None
        if x.shape[-1] != self.d_model:
            raise ShapeError(f"LSRA expects {self.d_model} channels in the last dimension, got shape {tuple(x.shape)}")
        a, c = x.split([self.attn_dim, self.conv_dim], dim=-1)
        return torch.cat([self.attn(a, attn_mask, is_causal, cache, layer_idx),
                          self.conv(c, padding_mask, cache, layer_idx)], dim=-1)


class FeedForward(nn.Module):
    """``Linear(d -> hidden) -> activation -> Linear(hidden -> d)``; flattened when ``hidden == d``."""

    def __init__(self, d_model: int, hidden: int, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.act = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.fc2(self.dropout(self.act(self.fc1(x))))


def attention_masks(T: int, past: int, causal: bool, key_valid: Optional[torch.Tensor], device) -> tuple:
    """``(attn_mask, is_causal)`` for ``T`` new queries over ``past + T`` keys.

    ``key_valid``: ``[B, past + T]`` (1 = token) or None. Returns ``(None, causal)`` when SDPA's
    own causal flag is exact (no padding, no past), else a bool mask ``[B or 1, 1, T, past+T]``.
    Every query may attend to its own position, so rows of padding never become empty.
    """
    if key_valid is None and (not causal or past == 0):
        return None, causal
    S = past + T
    mask = torch.ones(1, 1, T, S, dtype=torch.bool, device=device)
    if causal:
        q_pos = torch.arange(past, S, device=device)[:, None]
        mask = (torch.arange(S, device=device)[None, :] <= q_pos)[None, None]
    if key_valid is not None:
        if key_valid.shape[-1] != S:
            raise ShapeError(f"attention_mask covers {key_valid.shape[-1]} positions, expected past + new = {S}")
        mask = mask & key_valid.bool()[:, None, None, :]
        diag = torch.zeros(T, S, dtype=torch.bool, device=device)
        diag[torch.arange(T), torch.arange(past, S)] = True
        mask = mask | diag[None, None]
    return mask, False


def count_lightweight_macs(m: LightweightConv, inputs, output) -> int:
    """Mult-Adds of one ``LightweightConv`` call: ``K`` per output element (``B*T*C*K``)."""
    return output.numel() * m.kernel_size


def count_dynamic_macs(m: DynamicConv, inputs, output) -> int:
    """Kernel prediction ``B*T*C*heads*K`` plus the weighted sum ``B*T*C*K``."""
    x = inputs[0]
    tokens = x.numel() // x.shape[-1]
    return tokens * m.channels * m.heads * m.kernel_size + output.numel() * m.kernel_size


def param_init_(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2 style init for a freshly built LSRA/conv module tree (normal(0, std) linears, xavier conv kernels)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, LightweightConv):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


__all__ = ["PADDING_ORDERS", "LightweightConv", "DynamicConv", "ConvBranch", "SelfAttention", "CrossAttention", "LSRA",
           "FeedForward", "attention_masks", "update_conv_buffer", "count_lightweight_macs",
           "count_dynamic_macs", "param_init_"]
