"""BERT-family encoders: ``BertModel`` and ``RobertaModel`` (and every task head built on them).

Post-norm layers: ``attention.self.{query,key,value}``, ``attention.output.{dense,LayerNorm}``,
``intermediate.dense`` + activation, ``output.{dense,LayerNorm}``; the pooler reads token 0 (CLS).
"""
from __future__ import annotations

import torch

from .base import FamilyAdapter, LayerWeights, linear_cols, linear_rows, split_heads, unit_rows


class BertFamily(FamilyAdapter):
    name = "bert"
    causal = False
    summary = "BERT-family encoders: BertModel, RobertaModel and their task heads"
    positions = "absolute"

    def backbone_classes(self):
        from transformers import BertModel, RobertaModel

        classes = [BertModel, RobertaModel]
        try:
            from transformers import XLMRobertaModel
            classes.append(XLMRobertaModel)
        except ImportError:  # pragma: no cover
            pass
        return tuple(classes)

    def layers(self, backbone):
        return backbone.encoder.layer

    def attention(self, layer):
        return layer.attention.self

    def attn_weight_numel(self, layer):
        return super().attn_weight_numel(layer) + layer.attention.output.dense.weight.numel()

    def eager_attention(self):
        from transformers.models.bert.modeling_bert import eager_attention_forward
        return eager_attention_forward

    def embed(self, backbone, input_ids, inputs_embeds, position_ids, token_type_ids=None):
        # BERT: position_ids index the learned table; RoBERTa derives them from input_ids when None
        # (offset by padding_idx), so pass None there to keep its own convention.
        from transformers import BertModel

        pos = position_ids if isinstance(backbone, BertModel) else None
        if token_type_ids is None and input_ids is not None:
            token_type_ids = torch.zeros_like(input_ids)
        return backbone.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=pos,
                                   inputs_embeds=inputs_embeds)

    def project_qkv(self, layer, x, heads=None, rotary=None):
        att = layer.attention.self
        d = att.attention_head_size
        rows = None if heads is None else unit_rows(heads, d)
        q = linear_rows(x, att.query.weight, att.query.bias, rows)
        k = linear_rows(x, att.key.weight, att.key.bias, rows)
        v = linear_rows(x, att.value.weight, att.value.bias, rows)
        return split_heads(q, d), split_heads(k, d), split_heads(v, d)

    def layer_weights(self, layer):
        s, o = layer.attention.self, layer.attention.output
        return LayerWeights(q=(s.query.weight, s.query.bias), k=(s.key.weight, s.key.bias),
                            v=(s.value.weight, s.value.bias), out=(o.dense.weight, o.dense.bias),
                            ffn_in=(layer.intermediate.dense.weight, layer.intermediate.dense.bias),
                            ffn_out=(layer.output.dense.weight, layer.output.dense.bias),
                            attn_norm=o.LayerNorm, ffn_norm=layer.output.LayerNorm)

    def replace_attention(self, layer, module):
        layer.attention = module

    def keep_ffn_units(self, layer, units):
        from torch import nn

        inter, out = layer.intermediate, layer.output
        d, k = inter.dense.in_features, len(units)
        fc, pr = nn.Linear(d, k).train(inter.training), nn.Linear(k, d).train(out.training)
        with torch.no_grad():
            fc.weight.copy_(inter.dense.weight[units])
            fc.bias.copy_(inter.dense.bias[units])
            pr.weight.copy_(out.dense.weight[:, units])
            pr.bias.copy_(out.dense.bias)
        inter.dense, out.dense = fc, pr

    def out_weight_numel(self, layer):
        return layer.attention.output.dense.weight.numel()

    def project_out(self, layer, context, heads=None):
        dense = layer.attention.output.dense
        d = layer.attention.self.attention_head_size
        cols = None if heads is None else unit_rows(heads, d)
        return linear_cols(context, dense.weight, dense.bias, cols)

    def after_attention(self, layer, hidden, attn_out):
        out = layer.attention.output
        return out.LayerNorm(out.dropout(attn_out) + hidden)

    def feed_forward(self, layer, hidden):
        return layer.output(layer.intermediate(hidden), hidden)

    def pooler(self, backbone):
        return getattr(backbone, "pooler", None)

    def special_token_ids(self, config):
        ids = super().special_token_ids(config)
        eos = getattr(config, "eos_token_id", None)       # RoBERTa's </s> doubles as SEP
        if isinstance(eos, int):
            ids.add(eos)
        return ids
