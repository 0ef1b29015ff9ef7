"""SpAtten cascade token and head pruning (Wang, Zhang, Han; HPCA 2021) for Hugging Face models.

    import slimkit
    model = slimkit.apply(model, "spatten", token_keep=0.5, head_keep=1.0)
    out = model(**batch)          # last_hidden_state (B, L_kept, H), kept_indices, kept_attention_mask,
                                  # kept_token_weights, token_owner
    mean_pool(out.last_hidden_state, out.kept_token_weights)   # sentence embedding over the whole input
    model.spatten_stats           # per layer: tokens / heads kept, Mult-Adds saved
    distill(model, train_ids)     # encoders: short fine-tune toward the unpruned embeddings
    save_deltas(distill(model, ids, rank=16)["deltas"], "d.safetensors"); load_deltas(model, "d.safetensors")

Encoders (BERT, RoBERTa) and decoders (GPT-2, Llama; ``generate()`` with cache eviction).

Names are imported lazily, so registering the technique does not import transformers.
"""
from slimkit.parts import lazy_exports

_EXPORTS = {
    "SpattenConfig": ".config", "keep_schedule": ".schedule", "LayerStats": ".stats", "SpattenStats": ".stats",
    "apply_spatten": ".transform", "load_pretrained": ".transform", "remove_spatten": ".transform",
    "restore": ".transform", "spatten_config": ".transform", "distill": ".finetune",
    "save_deltas": ".finetune", "load_deltas": ".finetune", "mean_pool": ".textdata",
    "kv_budget_schedule": ".schedule", "TokenPolicy": ".policies", "ScoreInputs": ".policies",
    "register_policy": ".policies", "get_policy": ".policies", "policy_names": ".policies",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
