"""HAT (Hardware-Aware Transformers, ACL 2020): a weight-shared SuperTransformer, a latency
predictor trained on the user's own hardware, evolutionary search under a latency bound and
export of the found SubTransformer as a standalone Hugging Face model.

    from slimkit_nlp.hat import HatSpace, SuperTransformer
    net = SuperTransformer(HatSpace(task="decoder"))
    sub = net.space.sample(random.Random(0))
    logits = net(sub, input_ids)            # weight-shared slice
    model = net.export(sub)                 # dense HF PreTrainedModel (save_pretrained/generate)
"""
from slimkit.parts import lazy_exports

# lazy: importing the space does not import torch/transformers models
_EXPORTS = {
    "HatSpace": ".space", "SubConfig": ".space", "sample_sub": ".space", "SuperTransformer": ".supernet",
    "HatModelConfig": ".modeling", "HatForCausalLM": ".modeling", "HatForConditionalGeneration": ".modeling",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
