"""GPT-2 decoders: ``GPT2Model`` inside ``GPT2LMHeadModel`` and the other GPT-2 heads.

Pre-norm blocks: ``ln_1`` -> ``attn.c_attn`` (Conv1D, q|k|v columns) -> ``attn.c_proj``; ``ln_2`` -> ``mlp``;
learned absolute positions ``wpe`` added once at the input; final ``ln_f``.
"""
from __future__ import annotations

from .base import FamilyAdapter, LayerWeights, linear_cols, linear_rows, split_heads, unit_rows


class GPT2Family(FamilyAdapter):
    name = "gpt2"
    causal = True
    summary = "GPT-2 decoders: GPT2Model, GPT2LMHeadModel and the other GPT-2 heads"
    positions = "absolute"

    def backbone_classes(self):
        from transformers import GPT2Model
        return (GPT2Model,)

    def layers(self, backbone):
        return backbone.h

    def attention(self, layer):
        return layer.attn

    def special_token_ids(self, config):
        return set()        # GPT-2's bos/eos share one id that also ends documents; protect it explicitly

    def eager_attention(self):
        from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward
        return eager_attention_forward

    def embed(self, backbone, input_ids, inputs_embeds, position_ids, token_type_ids=None):
        h = backbone.wte(input_ids) if inputs_embeds is None else inputs_embeds
        h = h + backbone.wpe(position_ids)
        if token_type_ids is not None:
            h = h + backbone.wte(token_type_ids)
        return backbone.drop(h)

    def attn_input(self, layer, hidden):
        return layer.ln_1(hidden)

    def project_qkv(self, layer, x, heads=None, rotary=None):
        att = layer.attn
        d, D = att.head_dim, att.embed_dim
        w = att.c_attn.weight.t()              # Conv1D stores (in, out); view it as (out, in)
        b = att.c_attn.bias
        if heads is None:
            q, k, v = linear_rows(x, w, b, None).split(D, dim=2)
        else:
            rows = unit_rows(heads, d)
            import torch
            allrows = torch.cat([rows, rows + D, rows + 2 * D], dim=1)
            q, k, v = linear_rows(x, w, b, allrows).chunk(3, dim=2)
        return split_heads(q, d), split_heads(k, d), split_heads(v, d)

    def layer_weights(self, layer):
        att, mlp = layer.attn, layer.mlp
        D = att.embed_dim
        w, b = att.c_attn.weight.t(), att.c_attn.bias      # Conv1D stores (in, out): view as (out, in)
        return LayerWeights(q=(w[:D], b[:D]), k=(w[D:2 * D], b[D:2 * D]), v=(w[2 * D:], b[2 * D:]),
                            out=(att.c_proj.weight.t(), att.c_proj.bias),
                            ffn_in=(mlp.c_fc.weight.t(), mlp.c_fc.bias), ffn_out=(mlp.c_proj.weight.t(), mlp.c_proj.bias),
                            attn_norm=layer.ln_1, ffn_norm=layer.ln_2)

    def replace_attention(self, layer, module):
        layer.attn = module

    def keep_ffn_units(self, layer, units):
        import torch
        from transformers.pytorch_utils import Conv1D

        mlp = layer.mlp
        d, k = mlp.c_fc.weight.shape[0], len(units)
        fc, pr = Conv1D(k, d).train(mlp.training), Conv1D(d, k).train(mlp.training)
        with torch.no_grad():
            fc.weight.copy_(mlp.c_fc.weight[:, units])
            fc.bias.copy_(mlp.c_fc.bias[units])
            pr.weight.copy_(mlp.c_proj.weight[units, :])
            pr.bias.copy_(mlp.c_proj.bias)
        mlp.c_fc, mlp.c_proj = fc, pr

    def out_weight_numel(self, layer):
        return layer.attn.c_proj.weight.numel()

    def project_out(self, layer, context, heads=None):
        att = layer.attn
        cols = None if heads is None else unit_rows(heads, att.head_dim)
        out = linear_cols(context, att.c_proj.weight.t(), att.c_proj.bias, cols)
        return att.resid_dropout(out)

    def after_attention(self, layer, hidden, attn_out):
        return hidden + attn_out

    def feed_forward(self, layer, hidden):
        return hidden + layer.mlp(layer.ln_2(hidden))

    def final_norm(self, backbone, hidden):
        return backbone.ln_f(hidden)
