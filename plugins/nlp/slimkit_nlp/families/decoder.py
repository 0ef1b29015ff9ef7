"""Llama-shaped decoders: one generic adapter for every transformers decoder with the Llama layer shape.

A *Llama-shaped* backbone has ``embed_tokens``, ``layers`` (each with ``self_attn`` holding
``q_proj``/``k_proj``/``v_proj`` or a fused ``qkv_proj``, and ``o_proj``; ``mlp``; RMS/Layer norms),
a final ``norm`` and a ``rotary_emb``. One ``DecoderFamily`` instance is registered per model family
(``name`` tells which: ``llama``, ``mistral``, ``qwen3``, ...); the family's class recognises the model,
the layer's structure (which modules exist, their shapes) selects the quirks below, and the family's
own modeling module supplies ``apply_rotary_pos_emb`` and ``eager_attention_forward``, so each family
runs exactly the functions its own forward runs.

A head unit is one key/value head with its ``num_key_value_groups`` query heads (grouped-query
attention); ``heads`` selects units for every family (fused projections included).

Quirks, per family (transformers 5.24 modeling files):

- ``llama``, ``helium``, ``arcee``, ``seed_oss``: the plain shape. Pre-norm ``input_layernorm`` ->
  attention -> residual; ``post_attention_layernorm`` -> ``mlp`` -> residual; final ``norm``.
  Attention biases (Qwen2, Seed-OSS) ride in ``linear_rows``.
- ``mistral``, ``phi3``: one sliding window for every layer, ``config.sliding_window`` (None = full
  attention); HF passes ``sliding_window`` to the attention function and builds a sliding mask.
- ``qwen2``, ``qwen3``, ``ministral``, ``smollm3``: per-layer windows from ``config.layer_types``
  (``self_attn.sliding_window`` is set on ``sliding_attention`` layers only).
- ``qwen3`` (and ``gemma3``): ``q_norm``/``k_norm`` are RMS norms over one head's ``head_dim``, applied
  per head before rotary; they commute with head selection.
- ``olmo2``: ``q_norm``/``k_norm`` normalise the *whole* projection (all heads together), so with a
  head selection all rows are projected and normalised, then the kept heads are sliced (correct,
  no Mult-Add savings in q/k). No ``input_layernorm``: post-norm blocks, ``h + post_attention_layernorm(attn(h))``
  then ``h + post_feedforward_layernorm(mlp(h))``.
- ``olmo``: ``config.clip_qkv`` clamps the projected q, k and v.
- ``phi3``: fused ``qkv_proj`` (rows ``[q: H*d | k: Hkv*d | v: Hkv*d]``; a head selection gathers the
  matching rows of each block), fused ``gate_up_proj`` inside ``mlp`` (the mlp runs whole); partial
  rotary (``partial_rotary_factor``) is handled by Phi-3's own ``apply_rotary_pos_emb``.
- ``gemma``: the embedding module (``*TextScaledWordEmbedding``) already multiplies by
  ``sqrt(hidden_size)`` in 5.24 (like HF, ``inputs_embeds`` given directly are not scaled); RMS norms
  use ``1 + weight`` inside the module.
- ``gemma2``: as ``gemma``, plus sandwich norms: ``after_attention`` applies
  ``post_attention_layernorm`` to the attention output *before* the residual; ``feed_forward`` is
  ``h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))``; attention logit soft-capping
  (``attention_kwargs`` -> ``softcap``); sliding layers from ``config.layer_types``;
  ``att.scaling = query_pre_attn_scalar ** -0.5``. The final logit softcap lives in the LM head.
- ``gemma3``: as ``gemma2`` without attention soft-capping (HF does not pass it), with per-head
  ``q_norm``/``k_norm`` and a separate rotary base for sliding layers: ``rotary`` returns one
  ``(cos, sin)`` per layer type and ``project_qkv`` picks the layer's.
- ``granite``: ``embedding_multiplier`` on the embeddings, ``residual_multiplier`` on both branch
  outputs, ``attention_multiplier`` as ``att.scaling`` (the ``logits_scaling`` is in the LM head).
- ``smollm3``: layers with ``self_attn.use_rope == False`` (NoPE) skip rotary.
- ``exaone4``: post-norm blocks like ``olmo2`` with per-head ``q_norm``/``k_norm``; in hybrid models only
  sliding layers use rotary (global layers are NoPE).

Another family with this exact layer shape is one line away (check it with the exactness test in
``tests/nlp/test_decoder_families.py``)::

    from slimkit_nlp.families import DecoderFamily, DecoderSpec, register_family
    register_family(DecoderFamily(DecoderSpec("seed_oss", "seed_oss", "SeedOssModel", "SeedOssModel and its heads")))

Not supported here (different block shape): parallel attention + FFN (Cohere, Cohere 2, GPT-J,
Phi-1/2), GPT-NeoX (fused interleaved ``query_key_value``), mixture-of-experts decoders (untested), and
Gemma 3 with ``use_bidirectional_attention``.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field

import torch

from .base import FamilyAdapter, linear_cols, linear_rows, split_heads, unit_rows


@dataclass(frozen=True)
class DecoderSpec:
    """One model family of the Llama layer shape."""

    name: str
    module: str                        #: ``transformers.models.<module>.modeling_<module>``
    backbone: str                      #: backbone class name in that module
    summary: str
    window: str = "none"               #: ``none``, ``config`` (one window for all layers) or ``layer``
    softcap: bool = False              #: pass ``attn_logit_softcapping`` as ``softcap``
    nope_global: bool = False          #: hybrid models: only sliding layers use rotary (Exaone 4)
    extra: tuple = field(default=())   #: further backbone class names


SPECS: tuple[DecoderSpec, ...] = (
    DecoderSpec("llama", "llama", "LlamaModel", "LlamaModel and its heads, GQA"),
    DecoderSpec("mistral", "mistral", "MistralModel", "MistralModel and its heads, sliding window", window="config"),
    DecoderSpec("ministral", "ministral", "MinistralModel", "MinistralModel and its heads, per-layer sliding windows",
                window="layer"),
    DecoderSpec("qwen2", "qwen2", "Qwen2Model", "Qwen2Model and its heads, qkv bias, per-layer sliding windows",
                window="layer"),
    DecoderSpec("qwen3", "qwen3", "Qwen3Model", "Qwen3Model and its heads, per-head q/k norms", window="layer"),
    DecoderSpec("phi3", "phi3", "Phi3Model", "Phi3Model and its heads, fused qkv_proj and gate_up_proj",
                window="config"),
    DecoderSpec("gemma", "gemma", "GemmaModel", "GemmaModel and its heads, scaled embeddings"),
    DecoderSpec("gemma2", "gemma2", "Gemma2Model",
                "Gemma2Model and its heads, sandwich norms, attention softcap, sliding layers", window="layer",
                softcap=True),
    DecoderSpec("gemma3", "gemma3", "Gemma3TextModel",
                "Gemma3TextModel, Gemma3ForCausalLM, sandwich norms, q/k norms, local rotary",
                window="layer"),
    DecoderSpec("olmo", "olmo", "OlmoModel", "OlmoModel and its heads, clip_qkv"),
    DecoderSpec("olmo2", "olmo2", "Olmo2Model", "Olmo2Model and its heads, post-norms, full-width q/k norms"),
    DecoderSpec("granite", "granite", "GraniteModel", "GraniteModel and its heads, embedding/residual multipliers"),
    DecoderSpec("smollm3", "smollm3", "SmolLM3Model", "SmolLM3Model and its heads, NoPE layers", window="layer"),
    DecoderSpec("helium", "helium", "HeliumModel", "HeliumModel and its heads"),
    DecoderSpec("exaone4", "exaone4", "Exaone4Model", "Exaone4Model and its heads, post-norms, q/k norms, hybrid NoPE",
                window="layer", nope_global=True),
)


class _PerLayerType(dict):
    """Rotary tables per layer type (Gemma 3: a local rotary base for sliding layers)."""


class DecoderFamily(FamilyAdapter):
    """The adapter of one Llama-shaped family (see the module docstring for the quirks handled)."""

    causal = True
    positions = "rotary"

    def __init__(self, spec: DecoderSpec):
        self.spec = spec
        self.name = spec.name
        self.summary = spec.summary
        self._mod = None
        self._per_type_rotary: bool | None = None

    # -- recognising a model -------------------------------------------------------------
    def modeling(self):
        if self._mod is None:
            self._mod = importlib.import_module(f"transformers.models.{self.spec.module}.modeling_{self.spec.module}")
        return self._mod

    def backbone_classes(self):
        mod = self.modeling()
        return tuple(getattr(mod, n) for n in (self.spec.backbone,) + tuple(self.spec.extra))

    def backbone(self, model):
        """Matched by class (name and module, through the MRO: no transformers import needed)."""
        names = {self.spec.backbone, *self.spec.extra}
        module = f"transformers.models.{self.spec.module}.modeling_{self.spec.module}"
        for cand in (model, getattr(model, "base_model", None)):
            if cand is not None and any(c.__name__ in names and c.__module__ == module
                                        for c in type(cand).__mro__):
                return cand
        return None

    def matches(self, model):
        bb = self.backbone(model)
        return bb is not None and self._llama_shaped(bb)

    @staticmethod
    def _llama_shaped(bb) -> bool:
        """The structure this adapter drives (a class match with another structure is not taken)."""
        if not all(hasattr(bb, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
            return False
        if getattr(bb.config, "use_bidirectional_attention", False):
            return False
        for layer in bb.layers[:1]:
            att = getattr(layer, "self_attn", None)
            if att is None or not hasattr(att, "o_proj") or not hasattr(layer, "mlp"):
                return False
            if not (hasattr(att, "qkv_proj") or all(hasattr(att, p) for p in ("q_proj", "k_proj", "v_proj"))):
                return False
        return True

    # -- structure -------------------------------------------------------------------------
    def layers(self, backbone):
        return backbone.layers[: backbone.config.num_hidden_layers]

    def attention(self, layer):
        return layer.self_attn

    def eager_attention(self):
        return self.modeling().eager_attention_forward

    def out_weight_numel(self, layer):
        return layer.self_attn.o_proj.weight.numel()

    def sliding_window(self, layer):
        att = layer.self_attn
        if self.spec.window == "config":
            return getattr(att.config, "sliding_window", None)
        if self.spec.window == "layer":
            if hasattr(att, "is_sliding") and not att.is_sliding:
                return None
            return getattr(att, "sliding_window", None)
        return None

    def attention_kwargs(self, layer):
        """What the family's attention forward passes on top of ``dropout`` and ``scaling``."""
        kw = {}
        if self.spec.window != "none":
            kw["sliding_window"] = self.sliding_window(layer)
        if self.spec.softcap:
            kw["softcap"] = layer.self_attn.attn_logit_softcapping
        return kw

    # -- the layer loop ------------------------------------------------------------------
    def embed(self, backbone, input_ids, inputs_embeds, position_ids, token_type_ids=None):
        h = backbone.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        mult = getattr(backbone, "embedding_multiplier", None)          # Granite
        return h * mult if mult is not None else h

    def rotary(self, backbone, hidden, position_ids):
        emb = backbone.rotary_emb
        if self._per_type_rotary is None:
            self._per_type_rotary = "layer_type" in inspect.signature(emb.forward).parameters
        if self._per_type_rotary:
            return _PerLayerType({t: emb(hidden, position_ids, t) for t in set(backbone.config.layer_types)})
        return emb(hidden, position_ids=position_ids)

    def attn_input(self, layer, hidden):
        norm = getattr(layer, "input_layernorm", None)                 # OLMo 2 / EXAONE 4: post-norm only
        return norm(hidden) if norm is not None else hidden

    def _uses_rope(self, att) -> bool:
        if not getattr(att, "use_rope", True):                          # SmolLM3 NoPE layers
            return False
        if self.spec.nope_global and getattr(att, "sliding_window", None) is not None:
            return bool(getattr(att, "is_sliding", True))               # EXAONE 4 hybrid: global layers NoPE
        return True

    def project_qkv(self, layer, x, heads=None, rotary=None):
        att = layer.self_attn
        cfg = att.config
        d, g = att.head_dim, att.num_key_value_groups
        n_q, n_kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
        qn, kn = getattr(att, "q_norm", None), getattr(att, "k_norm", None)
        full_norm = qn is not None and qn.weight.shape[-1] != d          # OLMo 2: norm over all heads
        sel = None if full_norm else heads
        qrows = None if sel is None else unit_rows(sel, g * d)
        kvrows = None if sel is None else unit_rows(sel, d)
        if hasattr(att, "qkv_proj"):                                    # Phi-3: fused [q | k | v] rows
            w, b = att.qkv_proj.weight, att.qkv_proj.bias
            if sel is None:
                q, k, v = linear_rows(x, w, b, None).split([n_q, n_kv, n_kv], dim=2)
            else:
                rows = torch.cat([qrows, kvrows + n_q, kvrows + n_q + n_kv], dim=1)
                nq = qrows.shape[1]
                q, k, v = linear_rows(x, w, b, rows).split([nq, kvrows.shape[1], kvrows.shape[1]], dim=2)
        else:
            q = linear_rows(x, att.q_proj.weight, att.q_proj.bias, qrows)
            k = linear_rows(x, att.k_proj.weight, att.k_proj.bias, kvrows)
            v = linear_rows(x, att.v_proj.weight, att.v_proj.bias, kvrows)
        clip = getattr(cfg, "clip_qkv", None)                           # OLMo
        if clip is not None:
            q, k, v = q.clamp(-clip, clip), k.clamp(-clip, clip), v.clamp(-clip, clip)
        if full_norm:
            q, k = qn(q), kn(k)
            if heads is not None:
                q = q.gather(2, unit_rows(heads, g * d).unsqueeze(1).expand(-1, q.shape[1], -1))
                kr = unit_rows(heads, d).unsqueeze(1).expand(-1, k.shape[1], -1)
                k, v = k.gather(2, kr), v.gather(2, kr)
        q, k, v = split_heads(q, d), split_heads(k, d), split_heads(v, d)
        if qn is not None and not full_norm:                            # Qwen3 / Gemma 3: per-head norms
            q, k = qn(q), kn(k)
        if rotary is not None and self._uses_rope(att):
            if isinstance(rotary, _PerLayerType):
                rotary = rotary[att.layer_type]
            cos, sin = rotary
            q, k = self.modeling().apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def project_out(self, layer, context, heads=None):
        att = layer.self_attn
        cols = None if heads is None else unit_rows(heads, att.num_key_value_groups * att.head_dim)
        return linear_cols(context, att.o_proj.weight, att.o_proj.bias, cols)

    @staticmethod
    def _sandwich(layer) -> bool:
        """Norms on the branch outputs (Gemma 2/3, OLMo 2, EXAONE 4)."""
        return hasattr(layer, "post_feedforward_layernorm")

    def after_attention(self, layer, hidden, attn_out):
        if self._sandwich(layer):
            attn_out = layer.post_attention_layernorm(attn_out)
        mult = getattr(layer, "residual_multiplier", None)              # Granite
        return hidden + (attn_out * mult if mult is not None else attn_out)

    def feed_forward(self, layer, hidden):
        if self._sandwich(layer):
            pre = getattr(layer, "pre_feedforward_layernorm", None)     # Gemma 2/3 (OLMo 2 has none)
            out = layer.post_feedforward_layernorm(layer.mlp(pre(hidden) if pre is not None else hidden))
        else:
            out = layer.mlp(layer.post_attention_layernorm(hidden))
        mult = getattr(layer, "residual_multiplier", None)
        return hidden + (out * mult if mult is not None else out)

    def final_norm(self, backbone, hidden):
        return backbone.norm(hidden)


def decoder_families() -> list[DecoderFamily]:
    """One adapter per family in ``SPECS`` (a family's modeling module is imported on first use only)."""
    return [DecoderFamily(spec) for spec in SPECS]


__all__ = ["DecoderFamily", "DecoderSpec", "SPECS", "decoder_families"]
