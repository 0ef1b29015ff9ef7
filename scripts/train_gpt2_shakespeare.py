"""Train the small byte-level GPT-2 shipped in ``slimkit_nlp/assets/gpt2-shakespeare``.

4 layers, d=256, 4 heads, context 1024, vocabulary 256 (``ByteTokenizer``), trained a few CPU
minutes on ``slimkit_nlp.data.load_text("train")`` with the shared causal-LM trainer; saved
with ``save_pretrained`` in float16 (about 7 MB; ``load_shakespeare_gpt2()`` loads it as float32).

    .venv/bin/python scripts/train_gpt2_shakespeare.py --minutes 6 --threads 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from slimkit.io import atomic_write_json

OUT = Path(__file__).resolve().parents[1] / "plugins/nlp/slimkit_nlp/assets/gpt2-shakespeare"


def build():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=256, n_positions=1024, n_embd=256, n_layer=4, n_head=4,
                     bos_token_id=10, eos_token_id=10, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def train_bf16(model, text: str, eval_text: str, block: int, batch: int, seconds: float, lr: float, threads: int):
    """A plain AdamW loop under CPU bf16 autocast (about 2x the fp32 matmul rate); returns metrics."""
    import math

    import torch.nn.functional as F

    torch.set_num_threads(threads)
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    ev = torch.tensor(list(eval_text.encode("utf-8"))[: 32 * block], dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    t0, step, loss_v = time.time(), 0, float("nan")
    model.train()
    while time.time() - t0 < seconds:
        frac = (time.time() - t0) / seconds
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = torch.randint(0, len(data) - block - 1, (batch,), generator=g)
        x = torch.stack([data[i: i + block] for i in idx])
        y = torch.stack([data[i + 1: i + block + 1] for i in idx])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_v = loss.item()
        if step % 20 == 0:
            print(f"step {step} loss {loss_v:.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    with torch.no_grad():
        xs = ev[: (len(ev) - 1) // block * block + 1]
        x, y = xs[:-1].view(-1, block), xs[1:].view(-1, block)
        ev_loss = F.cross_entropy(model(input_ids=x).logits.reshape(-1, 256), y.reshape(-1)).item()
    return {"steps": step, "tokens_seen": step * batch * block, "final_train_loss": loss_v, "block_size": block,
            "batch_size": batch, "lr": lr, "bf16_autocast": True, "eval_loss": ev_loss,
            "eval_perplexity": math.exp(ev_loss), "eval_tokens": int(y.numel())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--init", type=Path, default=None, help="continue from a saved model folder")
    ap.add_argument("--bf16", action="store_true", help="plain loop under bf16 autocast instead of the shared trainer")
    args = ap.parse_args()

    from slimkit_nlp.data import load_text
    from slimkit_nlp.train import train_causal_lm

    torch.manual_seed(0)
    if args.init is not None:
        from transformers import GPT2LMHeadModel
        model = GPT2LMHeadModel.from_pretrained(args.init, dtype=torch.float32)
    else:
        model = build()
    t0 = time.time()
    if args.bf16:
        metrics = train_bf16(model, load_text("train"), load_text("validation"), args.block_size, args.batch_size,
                             args.minutes * 60, args.lr, args.threads)
    else:
        metrics = train_causal_lm(model, load_text("train"), load_text("validation"), block_size=args.block_size,
                                  batch_size=args.batch_size, time_budget_s=args.minutes * 60, lr=args.lr,
                                  warmup_steps=30, threads=args.threads, eval_tokens=32768, log_every=25)
    model = model.to(torch.float16)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    prev = {}
    if args.init is not None and (args.init / "training.json").exists():
        prev = json.loads((args.init / "training.json").read_text())
    earlier = prev.pop("previous_runs", []) + [prev] if prev else []
    info = {"previous_runs": earlier,
            "train_seconds": round(time.time() - t0, 1), "params": sum(p.numel() for p in model.parameters()),
            **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}
    atomic_write_json(args.out / "training.json", info)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
