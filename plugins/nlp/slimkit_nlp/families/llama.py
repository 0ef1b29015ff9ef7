"""Llama-family decoders: ``LlamaModel`` inside ``LlamaForCausalLM`` (grouped-query attention included).

Pre-norm blocks: ``input_layernorm`` -> ``self_attn.{q,k,v}_proj`` + rotary -> ``o_proj``;
``post_attention_layernorm`` -> ``mlp``; final ``norm``. Positions enter through rotary
embeddings in every layer, so a token keeps its original absolute position after pruning.
A head unit is one key/value head with its ``num_key_value_groups`` query heads.
"""
from __future__ import annotations

from .base import FamilyAdapter, linear_cols, linear_rows, split_heads, unit_rows


class LlamaFamily(FamilyAdapter):
    name = "llama"
    causal = True
    summary = "Llama-family decoders: LlamaModel, LlamaForCausalLM (GQA supported)"
    positions = "rotary"

    def backbone_classes(self):
        from transformers import LlamaModel
        return (LlamaModel,)

    def layers(self, backbone):
        return backbone.layers[: backbone.config.num_hidden_layers]

    def attention(self, layer):
        return layer.self_attn

    def eager_attention(self):
        from transformers.models.llama.modeling_llama import eager_attention_forward
        return eager_attention_forward

    def embed(self, backbone, input_ids, inputs_embeds, position_ids, token_type_ids=None):
        return backbone.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds

    def rotary(self, backbone, hidden, position_ids):
        return backbone.rotary_emb(hidden, position_ids=position_ids)

    def attn_input(self, layer, hidden):
        return layer.input_layernorm(hidden)

    def project_qkv(self, layer, x, heads=None, rotary=None):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        att = layer.self_attn
        d, g = att.head_dim, att.num_key_value_groups
        qrows = None if heads is None else unit_rows(heads, g * d)
        kvrows = None if heads is None else unit_rows(heads, d)
        q = split_heads(linear_rows(x, att.q_proj.weight, att.q_proj.bias, qrows), d)
        k = split_heads(linear_rows(x, att.k_proj.weight, att.k_proj.bias, kvrows), d)
        v = split_heads(linear_rows(x, att.v_proj.weight, att.v_proj.bias, kvrows), d)
        if rotary is not None:
            cos, sin = rotary
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def out_weight_numel(self, layer):
        return layer.self_attn.o_proj.weight.numel()

    def project_out(self, layer, context, heads=None):
        att = layer.self_attn
        cols = None if heads is None else unit_rows(heads, att.num_key_value_groups * att.head_dim)
        return linear_cols(context, att.o_proj.weight, att.o_proj.bias, cols)

    def after_attention(self, layer, hidden, attn_out):
        return hidden + attn_out

    def feed_forward(self, layer, hidden):
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def final_norm(self, backbone, hidden):
        return backbone.norm(hidden)
