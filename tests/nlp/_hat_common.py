"""Tiny HAT spaces shared by the HAT tests."""
from slimkit_nlp.hat.space import HatSpace


def tiny_space(task: str = "encdec", **kw) -> HatSpace:
    base = dict(task=task, vocab_size=20, max_positions=40, encoder_embed_choices=[16, 24, 32],
                decoder_embed_choices=[16, 24, 32], encoder_layer_choices=[2, 3], decoder_layer_choices=[1, 2, 3],
                encoder_ffn_choices=[16, 32, 48], decoder_ffn_choices=[16, 32, 48], encoder_head_choices=[2, 4],
                decoder_head_choices=[2, 4], ende_head_choices=[2, 4], ende_span_choices=[1, 2, 3], qkv_dim=16,
                dropout=0.0)
    base.update(kw)
    return HatSpace(**base)
