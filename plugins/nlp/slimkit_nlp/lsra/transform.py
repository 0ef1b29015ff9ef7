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

SUPPORTED = "GPT-2 (GPT2Model / GPT2LMHeadModel ...) and BERT-family encoders (BERT, RoBERTa, MiniLM, ELECTRA ...)"


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


# -- model families -------------------------------------------------------------------------
def _gpt2_blocks(model):
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block

    return [b for b in model.modules() if isinstance(b, GPT2Block) and isinstance(b.attn, GPT2Attention)]


def _bert_attentions(model):
    out = []
    for m in model.modules():
        s, o = getattr(m, "self", None), getattr(m, "output", None)
        if (isinstance(s, nn.Module) and isinstance(o, nn.Module)
                and all(isinstance(getattr(s, n, None), nn.Linear) for n in ("query", "key", "value"))
                and isinstance(getattr(o, "dense", None), nn.Linear) and isinstance(getattr(o, "LayerNorm", None), nn.LayerNorm)
                and not getattr(m, "is_cross_attention", False)):
            out.append(m)
    return out


def _bert_ffns(model):
    """(intermediate.dense, output.dense) of each BERT layer, in order."""
    pairs = []
    for m in model.modules():
        i, o = getattr(m, "intermediate", None), getattr(m, "output", None)
        if isinstance(getattr(i, "dense", None), nn.Linear) and isinstance(getattr(o, "dense", None), nn.Linear):
            pairs.append((i, o))
    return pairs


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


def _convert_gpt2(model, cfg: LSRAConfig, report: LSRAReport) -> None:
    from transformers.pytorch_utils import Conv1D

    blocks = _gpt2_blocks(model)
    c = model.config
    d, H = c.n_embd, c.n_head
    hd = d // H
    keep, a = _split_heads(H, hd, d, cfg, "GPT-2")
    if getattr(c, "scale_attn_by_inverse_layer_idx", False) or not getattr(c, "scale_attn_weights", True):
        raise UnsupportedModelError("LSRA conversion supports GPT-2 with the standard 1/sqrt(head_dim) attention scale "
                                    "(scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False)")
    causal = True if cfg.causal is None else cfg.causal
    kernels = kernel_sizes_for(len(blocks), cfg.kernel_sizes)
    _check_kernels(kernels, causal, getattr(c, "n_positions", None), "GPT-2")
    for i, block in enumerate(blocks):
        old = block.attn
        W, b = old.c_attn.weight, old.c_attn.bias  # [d, 3d] (in, out)
        lsra = _new_lsra(d, a, keep, kernels[i], cfg, causal, c.resid_pdrop, c.initializer_range, cfg.seed * 1000 + i)
        at = lsra.attn
        for j, proj in enumerate((at.q_proj, at.k_proj, at.v_proj)):
            _copy_(proj.weight, W[:a, j * d: j * d + a].T)
            _copy_(proj.bias, b[j * d: j * d + a])
        _copy_(at.out_proj.weight, old.c_proj.weight[:a, :a].T)
        _copy_(at.out_proj.bias, old.c_proj.bias[:a])
        kept = 4 * a * a + 4 * a
        new = sum(p.numel() for p in lsra.conv.parameters())
        before = _numel(old.c_attn.weight, old.c_attn.bias, old.c_proj.weight, old.c_proj.bias)
        block.attn = GPT2LSRAAttention(lsra, old.layer_idx if old.layer_idx is not None else i, c.resid_pdrop)
        block.attn.train(old.training)
        row = {"layer": i, "kept_heads": list(range(keep)), "attn_channels": a, "conv_channels": d - a,
               "kernel_size": kernels[i], "conv_type": cfg.conv_type, "causal": causal}
        report.kept_parameters += kept
        report.new_parameters += new
        report.dropped_parameters += before - kept
        if cfg.ffn_dim is not None:
            mlp = block.mlp
            hidden = mlp.c_fc.weight.shape[1]
            if cfg.ffn_dim > hidden:
                raise ConfigError(f"ffn_dim={cfg.ffn_dim} is larger than the FFN's {hidden} hidden units; pass at most {hidden}")
            idx = _top_units(mlp.c_fc.weight.T, mlp.c_proj.weight.T, cfg.ffn_dim)
            fc, pr = Conv1D(cfg.ffn_dim, d).train(mlp.training), Conv1D(d, cfg.ffn_dim).train(mlp.training)
            _copy_(fc.weight, mlp.c_fc.weight[:, idx])
            _copy_(fc.bias, mlp.c_fc.bias[idx])
            _copy_(pr.weight, mlp.c_proj.weight[idx, :])
            _copy_(pr.bias, mlp.c_proj.bias)
            report.kept_parameters += _numel(fc.weight, fc.bias, pr.weight, pr.bias)
            report.dropped_parameters += (hidden - cfg.ffn_dim) * (2 * d + 1)
            mlp.c_fc, mlp.c_proj = fc, pr
            row.update(ffn_before=hidden, ffn_after=cfg.ffn_dim)
        report.layers.append(row)
    if causal and len(blocks) == getattr(c, "n_layer", -1):
        # DynamicCache(config=...) then builds hybrid layers (KV + conv buffer) that beam search can reorder
        c.layer_types = ["hybrid"] * c.n_layer
    report.train = [f"*.attn.lsra.conv.* (conv branch, {report.new_parameters:,} new parameters)",
                    "fine-tune everything for best results (the attention half now reads only its own channels)"]


def _convert_bert(model, cfg: LSRAConfig, report: LSRAReport) -> None:
    atts = _bert_attentions(model)
    c = model.config
    d, H = c.hidden_size, c.num_attention_heads
    hd = d // H
    keep, a = _split_heads(H, hd, d, cfg, "BERT")
    causal = bool(getattr(c, "is_decoder", False)) if cfg.causal is None else cfg.causal
    kernels = kernel_sizes_for(len(atts), cfg.kernel_sizes)
    _check_kernels(kernels, causal, getattr(c, "max_position_embeddings", None), "BERT")
    ffns = _bert_ffns(model)
    for i, att in enumerate(atts):
        s, o = att.self, att.output
        lsra = _new_lsra(d, a, keep, kernels[i], cfg, causal, c.hidden_dropout_prob, c.initializer_range,
                         cfg.seed * 1000 + i)
        at = lsra.attn
        for proj, src in ((at.q_proj, s.query), (at.k_proj, s.key), (at.v_proj, s.value), (at.out_proj, o.dense)):
            _copy_(proj.weight, src.weight[:a, :a])
            _copy_(proj.bias, src.bias[:a])
        kept = 4 * a * a + 4 * a + _numel(o.LayerNorm.weight, o.LayerNorm.bias)
        before = sum(p.numel() for p in att.parameters())
        new_att = BertLSRAAttention(lsra, o.LayerNorm, getattr(s, "layer_idx", None) or i, c.hidden_dropout_prob)
        new_att.train(att.training)
        parent = next(m for m in model.modules() if getattr(m, "attention", None) is att)
        parent.attention = new_att
        row = {"layer": i, "kept_heads": list(range(keep)), "attn_channels": a, "conv_channels": d - a,
               "kernel_size": kernels[i], "conv_type": cfg.conv_type, "causal": causal}
        report.kept_parameters += kept
        report.new_parameters += sum(p.numel() for p in lsra.conv.parameters())
        report.dropped_parameters += before - kept
        if cfg.ffn_dim is not None and i < len(ffns):
            inter, out = ffns[i]
            hidden = inter.dense.out_features
            if cfg.ffn_dim > hidden:
                raise ConfigError(f"ffn_dim={cfg.ffn_dim} is larger than the FFN's {hidden} hidden units; pass at most {hidden}")
            idx = _top_units(inter.dense.weight, out.dense.weight, cfg.ffn_dim)
            fc, pr = nn.Linear(d, cfg.ffn_dim).train(inter.training), nn.Linear(cfg.ffn_dim, d).train(out.training)
            _copy_(fc.weight, inter.dense.weight[idx])
            _copy_(fc.bias, inter.dense.bias[idx])
            _copy_(pr.weight, out.dense.weight[:, idx])
            _copy_(pr.bias, out.dense.bias)
            report.kept_parameters += _numel(fc.weight, fc.bias, pr.weight, pr.bias)
            report.dropped_parameters += (hidden - cfg.ffn_dim) * (2 * d + 1)
            inter.dense, out.dense = fc, pr
            row.update(ffn_before=hidden, ffn_after=cfg.ffn_dim)
        report.layers.append(row)
    report.train = [f"*.attention.lsra.conv.* (conv branch, {report.new_parameters:,} new parameters)",
                    "fine-tune everything for best results (the attention half now reads only its own channels)"]


def apply_lsra(model: Any, config: LSRAConfig) -> Any:
    """Convert ``model`` in place (GPT-2 or BERT family); attach ``model.lsra_report``; return it."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"lsra converts torch models ({SUPPORTED}); got {type(model).__name__}")
    before = sum(p.numel() for p in model.parameters())
    if _gpt2_blocks(model):
        report = LSRAReport("GPT-2")
        _convert_gpt2(model, config, report)
    elif _bert_attentions(model):
        report = LSRAReport(type(model.config).__name__.replace("Config", "") if hasattr(model, "config") else "BERT")
        if not hasattr(model, "config"):
            raise UnsupportedModelError("lsra needs a Hugging Face BERT-family model with a .config")
        _convert_bert(model, config, report)
    else:
        raise UnsupportedModelError(f"lsra supports {SUPPORTED}; {type(model).__name__} has no such attention blocks")
    report.params_before = before
    report.params_after = sum(p.numel() for p in model.parameters())
    object.__setattr__(model, "lsra_report", report)
    return model
