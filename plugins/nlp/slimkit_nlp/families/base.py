"""The ``FamilyAdapter`` interface: one Hugging Face model family, seen layer by layer.

An adapter lets a technique drive a transformer's layer loop itself (to shrink
tensors between layers, slice heads, or swap the attention function) without
knowing the family's module names. Every method works on the *backbone* (the
``BertModel`` / ``GPT2Model`` / ``LlamaModel`` inside any task head) or on one
of its layers. Shapes: ``B`` batch, ``L`` tokens, ``D`` hidden size, ``H`` query
heads, ``Hkv`` key/value heads, ``d`` head dim.

Head selection uses *units*: a unit is one key/value head together with the
query heads that share it (one head for BERT and GPT-2; a GQA group for Llama).
``heads`` arguments are ``None`` (all units) or a ``LongTensor (B, U)`` of kept
unit indices per sample, sorted ascending; the projections are then computed
for those rows only (weights gathered per sample), so the skipped heads cost
no Mult-Adds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def unit_rows(heads: torch.Tensor, rows_per_unit: int, offset: int = 0) -> torch.Tensor:
    """Row indices ``(B, U * rows_per_unit)`` of the weight rows belonging to the kept units."""
    ar = torch.arange(rows_per_unit, device=heads.device)
    return (heads.unsqueeze(-1) * rows_per_unit + ar + offset).flatten(1)


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                rows: torch.Tensor | None) -> torch.Tensor:
    """``x (B, L, in) @ weight[rows].T + bias[rows]``; ``weight`` is ``(out, in)``; ``rows (B, R)`` or None.

    When every sample keeps the same rows a single sliced ``F.linear`` is used;
    otherwise the rows are gathered per sample and applied with one ``bmm``.
    """
    if rows is None:
        return F.linear(x, weight, bias)
    if rows.shape[0] == 1 or bool((rows == rows[:1]).all()):
        r = rows[0]
        return F.linear(x, weight.index_select(0, r), None if bias is None else bias.index_select(0, r))
    w = weight[rows]                                  # (B, R, in)
    out = torch.bmm(x, w.transpose(1, 2))
    if bias is not None:
        out = out + bias[rows].unsqueeze(1)
    return out


def linear_cols(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                cols: torch.Tensor | None) -> torch.Tensor:
    """``x (B, L, C) @ weight[:, cols].T + bias``; the input features of ``weight (out, in)`` are sliced."""
    if cols is None:
        return F.linear(x, weight, bias)
    if cols.shape[0] == 1 or bool((cols == cols[:1]).all()):
        return F.linear(x, weight.index_select(1, cols[0]), bias)
    w = weight.t()[cols]                              # (B, C, out)
    out = torch.bmm(x, w)
    if bias is not None:
        out = out + bias
    return out


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``(B, L, n * d) -> (B, n, L, d)``."""
    b, l, _ = x.shape
    return x.view(b, l, -1, head_dim).transpose(1, 2)


Linear = tuple[torch.Tensor, Optional[torch.Tensor]]   # (weight [out, in], bias [out] or None)


@dataclass
class LayerWeights:
    """One layer's parameters in ``nn.Linear`` layout (``weight [out, in]``), as views of the model's
    own tensors (no copies), for conversions that rebuild layers (``lsra``, ``hat``).

    ``q``, ``k``, ``v``: the query/key/value projections ``[H*d, D]``; ``out``: the attention output
    projection ``[D, H*d]``; ``ffn_in`` ``[F, D]`` and ``ffn_out`` ``[D, F]``: the feed-forward pair;
    ``attn_norm`` / ``ffn_norm``: the LayerNorm before (pre-norm) or after (post-norm) each block.
    """

    q: Linear
    k: Linear
    v: Linear
    out: Linear
    ffn_in: Linear
    ffn_out: Linear
    attn_norm: nn.Module
    ffn_norm: nn.Module


class FamilyAdapter:
    """Base class of a model-family adapter (see the module docstring).

    Subclasses set ``name``, ``causal``, ``summary`` and implement the methods
    below. Register an instance with ``slimkit_nlp.families.register_family``.
    """

    name: str = ""
    causal: bool = False
    summary: str = ""
    #: ``rotary``: positions enter through rotary embeddings in every layer (keys are cached rotated);
    #: ``absolute``: through a learned position embedding added once at the input.
    positions: str = "absolute"

    # -- recognising a model ---------------------------------------------------------
    def backbone_classes(self) -> tuple[type, ...]:
        """The backbone classes this family handles (imported lazily)."""
        raise NotImplementedError

    def backbone(self, model: nn.Module) -> nn.Module | None:
        """The backbone inside ``model`` (the model itself or its ``base_model``), or None."""
        classes = self.backbone_classes()
        for cand in (model, getattr(model, "base_model", None)):
            if cand is not None and isinstance(cand, classes):
                return cand
        return None

    def matches(self, model: nn.Module) -> bool:
        return self.backbone(model) is not None

    # -- structure -------------------------------------------------------------------
    def layers(self, backbone: nn.Module) -> Sequence[nn.Module]:
        raise NotImplementedError

    def attention(self, layer: nn.Module) -> nn.Module:
        """The self-attention module of ``layer``: the ``module`` argument HF passes to attention
        functions (it has ``.config``, ``.layer_idx`` where the family sets it, and ``.scaling``)."""
        raise NotImplementedError

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """Every self-attention module of ``model``, in layer order."""
        bb = self.backbone(model)
        return [self.attention(layer) for layer in self.layers(bb)]

    def attn_weight_numel(self, layer: nn.Module) -> int:
        """Weights of the q/k/v/output projections of ``layer`` (Mult-Adds per token they cost)."""
        return sum(p.numel() for p in self.attention(layer).parameters() if p.dim() == 2)

    def out_weight_numel(self, layer: nn.Module) -> int:
        """Weights of the attention output projection (part of ``attn_weight_numel``); 0 when unknown,
        which counts it with q/k/v in the Mult-Adds statistics."""
        return 0

    # -- weights and rebuilding (conversions) -------------------------------------------
    def layer_weights(self, layer: nn.Module) -> LayerWeights:
        """``layer``'s projections in ``nn.Linear`` layout (see :class:`LayerWeights`)."""
        raise NotImplementedError(f"the {self.name} adapter does not expose layer weights")

    def replace_attention(self, layer: nn.Module, module: nn.Module) -> None:
        """Put ``module`` where ``layer``'s attention block is (the module HF calls with hidden states)."""
        raise NotImplementedError(f"the {self.name} adapter cannot replace attention blocks")

    def keep_ffn_units(self, layer: nn.Module, units: torch.Tensor) -> None:
        """Shrink ``layer``'s feed-forward to the hidden ``units`` (sorted indices), in the family's own module
        types, copying their weights."""
        raise NotImplementedError(f"the {self.name} adapter cannot shrink feed-forward layers")

    def num_heads(self, backbone: nn.Module) -> int:
        return backbone.config.num_attention_heads

    def num_kv_heads(self, backbone: nn.Module) -> int:
        return getattr(backbone.config, "num_key_value_heads", None) or self.num_heads(backbone)

    def head_dim(self, backbone: nn.Module) -> int:
        cfg = backbone.config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def num_units(self, backbone: nn.Module) -> int:
        """Number of prunable head units (= key/value heads)."""
        return self.num_kv_heads(backbone)

    def special_token_ids(self, config: Any) -> set[int]:
        """Ids of the family's special tokens found in the config (CLS, SEP, BOS)."""
        ids = set()
        for attr in ("cls_token_id", "sep_token_id", "bos_token_id"):
            v = getattr(config, attr, None)
            if isinstance(v, int):
                ids.add(v)
        return ids

    def attention_kwargs(self, layer: nn.Module) -> dict:
        """Extra keyword arguments the family's attention function takes for ``layer`` (e.g. Gemma 2's
        ``softcap``, ``sliding_window``); ``{}`` for most families."""
        return {}

    def sliding_window(self, layer: nn.Module) -> int | None:
        """Tokens a query of ``layer`` may look back (itself included), or None for full attention.
        Techniques that build their own masks honour it (Mistral, Qwen2, Gemma 2/3 local layers)."""
        return None

    def eager_attention(self) -> Callable:
        """The family's own eager attention function (what ``attn_implementation="eager"`` runs)."""
        raise NotImplementedError

    # -- the layer loop ----------------------------------------------------------------
    def embed(self, backbone: nn.Module, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
              position_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings ``(B, L, D)`` (absolute position embeddings included where the family has them)."""
        raise NotImplementedError

    def rotary(self, backbone: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor):
        """``(cos, sin)`` each ``(B, L, d)`` for rotary families, else None."""
        return None

    def attn_input(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """What the attention projections read (pre-norm families normalise here)."""
        return hidden

    def project_qkv(self, layer: nn.Module, x: torch.Tensor, heads: torch.Tensor | None = None,
                    rotary=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(B, U*g, L, d)``, keys and values ``(B, U, L, d)`` of the kept units (rotated if rotary)."""
        raise NotImplementedError

    def project_out(self, layer: nn.Module, context: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
        """Output projection of the attention context ``(B, L, U*g*d) -> (B, L, D)`` (bias included)."""
        raise NotImplementedError

    def after_attention(self, layer: nn.Module, hidden: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual (and post-norm) after attention."""
        raise NotImplementedError

    def feed_forward(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The feed-forward block with its residual (and norm)."""
        raise NotImplementedError

    def final_norm(self, backbone: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def pooler(self, backbone: nn.Module):
        """The backbone's pooler module (reads the first token), or None."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}{' causal' if self.causal else ''}>"
