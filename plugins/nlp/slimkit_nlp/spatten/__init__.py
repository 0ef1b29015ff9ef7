"""SpAtten cascade token and head pruning (Wang, Zhang, Han; HPCA 2021) for Hugging Face models.

    import slimkit
    model = slimkit.apply(model, "spatten", token_keep=0.5, head_keep=1.0)
    out = model(**batch)          # last_hidden_state (B, L_kept, H), kept_indices, kept_attention_mask
    model.spatten_stats           # per layer: tokens / heads kept, Mult-Adds saved

Encoders (BERT, RoBERTa) and decoders (GPT-2, Llama; ``generate()`` with cache eviction).
"""
from .config import SpattenConfig
from .schedule import keep_schedule
from .stats import LayerStats, SpattenStats
from .transform import apply_spatten, load_pretrained, remove_spatten, restore, spatten_config

__all__ = ["SpattenConfig", "apply_spatten", "remove_spatten", "restore", "load_pretrained", "spatten_config",
           "keep_schedule", "SpattenStats", "LayerStats"]
