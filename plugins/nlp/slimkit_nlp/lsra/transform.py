"""``slimkit.apply(model, "lsra", ...)``: GPT-2 / BERT-family self-attention -> LSRA blocks for fine-tuning.

For every layer, the first ``round(heads * attention_ratio)`` heads stay in the attention half:
their q/k/v/output weights are copied for their channels (``W[:a, :a]`` with ``a`` = kept heads x
head dim, the branch reading input channels ``[:a]`` and writing output channels ``[:a]``); the
remaining channels ``[a:]`` go through a freshly initialised convolution branch. Optionally the FFN
is flattened (``ffn_dim``) by keeping its most important hidden units. ``model.lsra_report`` says
what was kept and which parameters must be trained.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from slimkit.errors import ConfigError, UnsupportedModelError

from ..compat import pick_cache
from .config import LSRAConfig
from .modeling import kernel_sizes_for
from .modules import LSRA, param_init_

SUPPORTED = "GPT-2 (GPT2Model / GPT2LMHeadModel ...) and BERT-family encoders (BERT, RoBERTa, XLM-R, MiniLM ...)"


# -- attention masks coming from Hugging Face models ------------------------------------------
def _bool_mask(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """HF 4-D mask (bool True = attend, or additive float 0 / -inf) -> bool ``[B, 1, T, S]``."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    while mask.dim() < 4:
        mask = mask.unsqueeze(1)
    return mask


def _with_diagonal(mask: torch.Tensor, T: int) -> torch.Tensor:
    """Let each query see its own key so rows of padding never become empty (no NaN)."""
    S = mask.shape[-1]
    diag = torch.zeros(mask.shape[-2], S, dtype=torch.bool, device=mask.device)
    rows = torch.arange(mask.shape[-2], device=mask.device)
    diag[rows, S - mask.shape[-2] + rows] = True
    return mask | diag


class _HFLSRAMixin:
    """Shared by the GPT-2 and BERT replacements: HF mask -> (attn_mask, padding mask)."""

    lsra: LSRA

    def _run(self, x, attention_mask, past_key_values):
        T = x.shape[1]
        mask = _bool_mask(attention_mask)
        cache = past_key_values
        if cache is not None and hasattr(cache, "self_attention_cache"):
            cache = cache.self_attention_cache
        padding = None
        if mask is not None:
            if mask.shape[0] == x.shape[0] and mask.shape[-1] >= T:  # keys nobody may attend = padding
                padding = mask.any(dim=-2)[:, 0, -T:].to(x.dtype)
            if mask.shape[-2] == T and mask.shape[-1] >= T:
                mask = _with_diagonal(mask, T)
        is_causal = self.lsra.causal and mask is None
        if mask is None and self.lsra.causal and cache is not None and cache.get_seq_length(self.layer_idx) > 0:
            is_causal = False  # one new query over cached keys: all visible
            if T > 1:
                past = cache.get_seq_length(self.layer_idx)
                S = past + T
                mask = (torch.arange(S, device=x.device)[None, :] <=
                        torch.arange(past, S, device=x.device)[:, None])[None, None]
        return self.lsra(x, mask, is_causal, padding, cache, self.layer_idx)


class GPT2LSRAAttention(_HFLSRAMixin, nn.Module):
    """Drop-in for ``GPT2Attention`` (self-attention only): returns ``(output [B, T, d], None)``."""

    def __init__(self, lsra: LSRA, layer_idx: int, dropout: float):
        super().__init__()
        self.lsra, self.layer_idx = lsra, layer_idx
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, hidden_states, past_key_values=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, output_attentions=False, cache=None, **kwargs):
        out = self._run(hidden_states, attention_mask, pick_cache(cache, past_key_values))
        return self.resid_dropout(out), None


class BertLSRAAttention(_HFLSRAMixin, nn.Module):
    """Drop-in for ``BertAttention`` (self-attention + output): ``LayerNorm(x + LSRA(x))``, returns ``(out, None)``."""

    def __init__(self, lsra: LSRA, layer_norm: nn.LayerNorm, layer_idx: int, dropout: float):
        super().__init__()
        self.lsra, self.LayerNorm, self.layer_idx = lsra, layer_norm, layer_idx
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                past_key_values=None, cache=None, **kwargs):
        out = self._run(hidden_states, attention_mask, pick_cache(cache, past_key_values))
        return self.LayerNorm(self.dropout(out) + hidden_states), None


# -- report ------------------------------------------------------------------------------------
@dataclass
class LSRAReport:
    """What the conversion kept and what must be trained."""

    family: str
    layers: list = field(default_factory=list)
    kept_parameters: int = 0
    new_parameters: int = 0
    dropped_parameters: int = 0
    params_before: int = 0
    params_after: int = 0
    train: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("family", "layers", "kept_parameters", "new_parameters",
                                                "dropped_parameters", "params_before", "params_after", "train")}

    def __str__(self) -> str:
        lines = [f"LSRA conversion of a {self.family} model: {len(self.layers)} layers",
                 f"  parameters {self.params_before:,} -> {self.params_after:,}: kept {self.kept_parameters:,} "
                 f"(copied from the original), new {self.new_parameters:,} (must be trained), "
                 f"dropped {self.dropped_parameters:,}"]
        for r in self.layers:
            lines.append(f"  layer {r['layer']}: attention keeps heads {r['kept_heads']} "
                         f"({r['attn_channels']} channels), conv branch {r['conv_channels']} channels "
                         f"K={r['kernel_size']} ({r['conv_type']}, new)"
                         + (f", FFN {r['ffn_before']} -> {r['ffn_after']} hidden units" if r.get("ffn_after") else ""))
        lines.append("  train: " + ", ".join(self.train))
        return "\n".join(lines)


def _numel(*tensors) -> int:
    return sum(t.numel() for t in tensors if t is not None)


# -- model families (module structure lives in slimkit_nlp.families) ---------------------------
LSRA_FAMILIES = ("gpt2", "bert")


def _family_of(model):
    """The families adapter of ``model`` when lsra converts that family; ``UnsupportedModelError`` otherwise."""
    from slimkit_nlp.families import resolve_family

    try:
        fam = resolve_family(model)
    except UnsupportedModelError:
        fam = None
    if fam is None or fam.name not in LSRA_FAMILIES:
        raise UnsupportedModelError(f"lsra supports {SUPPORTED}; {type(model).__name__} is not one of them")
    layers = fam.layers(fam.backbone(model))
    if any(isinstance(getattr(layer, "attn", None) or getattr(layer, "attention", None), _HFLSRAMixin)
           for layer in layers):
        raise ConfigError("this model already has LSRA blocks; apply lsra to the original model")
    return fam, layers


def _split_heads(heads: int, head_dim: int, d: int, cfg: LSRAConfig, family: str) -> tuple[int, int]:
    keep = int(round(heads * cfg.attention_ratio))
    if not 1 <= keep < heads:
        raise ConfigError(f"attention_ratio={cfg.attention_ratio} keeps {keep} of the {heads} heads of this {family} "
                          "model; choose a ratio that keeps at least one head and drops at least one")
    attn = keep * head_dim
    if (d - attn) % cfg.conv_heads:
        raise ConfigError(f"the conv branch gets {d - attn} channels, not divisible by conv_heads={cfg.conv_heads}; "
                          "choose another conv_heads")
    return keep, attn


def _check_kernels(kernels: list[int], causal: bool, max_positions, family: str) -> None:
    """``ConfigError`` for kernel sizes the converted model cannot use as asked: longer than any input the
    model reads (taps that only ever see padding), or even in a bidirectional model (no centred window)."""
    for i, K in enumerate(kernels):
        if isinstance(max_positions, int) and K > max_positions:
            raise ConfigError(f"kernel size {K} of layer {i} is longer than the {max_positions} positions this "
                              f"{family} model reads, so {K - max_positions} of its taps would only ever see "
                              f"padding; use kernel sizes of at most {max_positions}")
        if not causal and K % 2 == 0:
            raise ConfigError(f"kernel size {K} of layer {i} is even, so the bidirectional conv of this {family} "
                              f"model cannot centre its window on the token (it would read {K // 2} tokens before "
                              f"and {K - 1 - K // 2} after); use odd sizes such as {K - 1} or {K + 1}")


def _new_lsra(d, attn, keep, K, cfg, causal, dropout, std, gen_seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(gen_seed)
        lsra = LSRA(d, attn, keep, K, cfg.conv_type, cfg.conv_heads, cfg.glu, causal, dropout, 0.0, cfg.weight_dropout)
        param_init_(lsra.conv, std)
    return lsra


def _copy_(dst: nn.Parameter, src: torch.Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src)


def _top_units(w_in_rows: torch.Tensor, w_out_cols: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (sorted) of the ``k`` hidden units with the largest ``|w_in| * |w_out|``."""
    score = w_in_rows.norm(dim=1) * w_out_cols.norm(dim=0)
    return score.topk(k).indices.sort().values


def _copy_attention_half(lsra: LSRA, w, a: int) -> None:
    """The attention branch keeps the first ``a`` channels of q/k/v/out (its ``keep`` heads)."""
    at = lsra.attn
    for proj, (weight, bias) in ((at.q_proj, w.q), (at.k_proj, w.k), (at.v_proj, w.v), (at.out_proj, w.out)):
        _copy_(proj.weight, weight[:a, :a])
        _copy_(proj.bias, bias[:a])


def _shrink_ffn(fam, layer, w, cfg: LSRAConfig, d: int, report: LSRAReport, row: dict) -> None:
    hidden = w.ffn_in[0].shape[0]
    if cfg.ffn_dim > hidden:
        raise ConfigError(f"ffn_dim={cfg.ffn_dim} is larger than the FFN's {hidden} hidden units; pass at most {hidden}")
    fam.keep_ffn_units(layer, _top_units(w.ffn_in[0], w.ffn_out[0], cfg.ffn_dim))
    report.kept_parameters += cfg.ffn_dim * (2 * d + 1) + d
    report.dropped_parameters += (hidden - cfg.ffn_dim) * (2 * d + 1)
    row.update(ffn_before=hidden, ffn_after=cfg.ffn_dim)


def _family_settings(fam, c, cfg: LSRAConfig) -> dict:
    """Model size, dropout, positions and causality from the family's config names."""
    if fam.name == "gpt2":
        if getattr(c, "scale_attn_by_inverse_layer_idx", False) or not getattr(c, "scale_attn_weights", True):
            raise UnsupportedModelError("LSRA conversion supports GPT-2 with the standard 1/sqrt(head_dim) attention "
                                        "scale (scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False)")
        return {"label": "GPT-2", "d": c.n_embd, "heads": c.n_head, "dropout": c.resid_pdrop,
                "positions": getattr(c, "n_positions", None), "causal": True if cfg.causal is None else cfg.causal}
    causal = bool(getattr(c, "is_decoder", False)) if cfg.causal is None else cfg.causal
    return {"label": "BERT", "d": c.hidden_size, "heads": c.num_attention_heads, "dropout": c.hidden_dropout_prob,
            "positions": getattr(c, "max_position_embeddings", None), "causal": causal}


def _lsra_block(fam, layer, lsra: LSRA, index: int, dropout: float) -> nn.Module:
    """The drop-in attention module of the family around ``lsra``."""
    old = fam.attention(layer)
    idx = getattr(old, "layer_idx", None)
    idx = index if idx is None else idx
    if fam.name == "gpt2":
        return GPT2LSRAAttention(lsra, idx, dropout).train(layer.attn.training)
    return BertLSRAAttention(lsra, layer.attention.output.LayerNorm, idx or index, dropout).train(layer.attention.training)


def _convert(model, fam, layers, cfg: LSRAConfig, report: LSRAReport) -> None:
    """Replace every layer's attention with LSRA (its first heads keep their weights; the conv branch is new)."""
    c = model.config
    st = _family_settings(fam, c, cfg)
    d, H = st["d"], st["heads"]
    keep, a = _split_heads(H, d // H, d, cfg, st["label"])
    kernels = kernel_sizes_for(len(layers), cfg.kernel_sizes)
    _check_kernels(kernels, st["causal"], st["positions"], st["label"])
    for i, layer in enumerate(layers):
        w = fam.layer_weights(layer)
        before = sum(p.numel() for p in (fam.attention(layer) if fam.name == "gpt2" else layer.attention).parameters())
        lsra = _new_lsra(d, a, keep, kernels[i], cfg, st["causal"], st["dropout"], c.initializer_range,
                         cfg.seed * 1000 + i)
        _copy_attention_half(lsra, w, a)
        kept = 4 * a * a + 4 * a + (0 if fam.name == "gpt2" else _numel(w.attn_norm.weight, w.attn_norm.bias))
        fam.replace_attention(layer, _lsra_block(fam, layer, lsra, i, st["dropout"]))
        row = {"layer": i, "kept_heads": list(range(keep)), "attn_channels": a, "conv_channels": d - a,
               "kernel_size": kernels[i], "conv_type": cfg.conv_type, "causal": st["causal"]}
        report.kept_parameters += kept
        report.new_parameters += sum(p.numel() for p in lsra.conv.parameters())
        report.dropped_parameters += before - kept
        if cfg.ffn_dim is not None:
            _shrink_ffn(fam, layer, w, cfg, d, report, row)
        report.layers.append(row)
    if fam.name == "gpt2" and st["causal"] and len(layers) == getattr(c, "n_layer", -1):
        # DynamicCache(config=...) then builds hybrid layers (KV + conv buffer) that beam search can reorder
        c.layer_types = ["hybrid"] * c.n_layer
    where = "attn" if fam.name == "gpt2" else "attention"
    report.train = [f"*.{where}.lsra.conv.* (conv branch, {report.new_parameters:,} new parameters)",
                    "fine-tune everything for best results (the attention half now reads only its own channels)"]


def apply_lsra(model: Any, config: LSRAConfig) -> Any:
    """Convert ``model`` in place (GPT-2 or BERT family); attach ``model.lsra_report``; return it."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"lsra converts torch models ({SUPPORTED}); got {type(model).__name__}")
    before = sum(p.numel() for p in model.parameters())
    fam, layers = _family_of(model)
    label = "GPT-2" if fam.name == "gpt2" else type(model.config).__name__.replace("Config", "")
    report = LSRAReport(label)
    _convert(model, fam, layers, config, report)
    report.params_before = before
    report.params_after = sum(p.numel() for p in model.parameters())
    object.__setattr__(model, "lsra_report", report)
    return model
