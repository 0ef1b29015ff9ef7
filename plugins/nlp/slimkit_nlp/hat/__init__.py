"""HAT (Hardware-Aware Transformers, ACL 2020): a weight-shared SuperTransformer, a latency
predictor trained on the user's own hardware, evolutionary search under a latency bound and
export of the found SubTransformer as a standalone Hugging Face model.

    from slimkit_nlp.hat import HatSpace, SuperTransformer
    net = SuperTransformer(HatSpace(task="decoder"))
    sub = net.space.sample(random.Random(0))
    logits = net(sub, input_ids)            # weight-shared slice
    model = net.export(sub)                 # dense HF PreTrainedModel (save_pretrained/generate)
"""
_EXPORTS = {
    "HatSpace": "space", "SubConfig": "space", "sample_sub": "space", "SuperTransformer": "supernet",
    "HatModelConfig": "modeling", "HatForCausalLM": "modeling", "HatForConditionalGeneration": "modeling",
}
__all__ = list(_EXPORTS)


def __getattr__(name):  # lazy: importing the space does not import torch/transformers models
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
