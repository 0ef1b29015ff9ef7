"""SuperTransformer training on accelerate: one SubTransformer per step, sampled uniformly
and seeded by the step number (every process trains the same one; each process draws
its own batch). Progress bar, periodic checkpoints, resume from the last checkpoint.

Checkpoint folder: ``space.yaml`` (the design space), ``supernet.safetensors`` (the
shared weights) and ``train_state.json`` (step, losses; optimizer in ``optimizer.pt``).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from slimkit.errors import ConfigError

from .space import HatSpace, sample_sub
from .supernet import SuperTransformer
from .tasks import evaluate

SPACE_FILE, WEIGHTS_FILE, STATE_FILE, OPT_FILE = "space.yaml", "supernet.safetensors", "train_state.json", "optimizer.pt"


def save_supernet(net: SuperTransformer, directory: str | Path, state: dict | None = None) -> Path:
    from safetensors.torch import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    net.space.save(d / SPACE_FILE)
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(d / WEIGHTS_FILE))
    if state is not None:
        (d / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    return d


def load_supernet(directory: str | Path) -> SuperTransformer:
    """A SuperTransformer from a checkpoint folder written by ``save_supernet`` / ``slimkit hat train``."""
    from safetensors.torch import load_file
    d = Path(directory)
    if not (d / SPACE_FILE).exists() or not (d / WEIGHTS_FILE).exists():
        raise ConfigError(f"{str(d)!r} is not a SuperTransformer checkpoint (needs {SPACE_FILE} and {WEIGHTS_FILE}); "
                          f"train one with `slimkit hat train --output-dir DIR`")
    net = SuperTransformer(HatSpace.load(d / SPACE_FILE))
    net.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
    return net.eval()


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def train_supernet(net: SuperTransformer, task, steps: int = 1000, batch_size: int = 32, lr: float = 1e-3,
                   warmup: int = 50, weight_decay: float = 0.01, seed: int = 0, output_dir: str | Path | None = None,
                   checkpoint_every: int = 200, eval_every: int = 0, time_budget_s: float | None = None,
                   progress: bool = True, clip: float = 1.0) -> dict:
    """Train ``net`` on ``task`` for ``steps`` updates (or until ``time_budget_s``).

    Step ``s`` trains ``sample_sub(space, s, seed)``. Resumes from ``output_dir`` when it
    holds a checkpoint. Returns ``{"steps", "train_loss", "val_loss_largest", "val_loss_smallest", ...}``.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    if task.vocab_size > net.space.vocab_size:
        raise ConfigError(f"the task needs vocab_size {task.vocab_size} but the space has {net.space.vocab_size}; "
                          f"set vocab_size in the space")
    if task.is_encdec != net.space.is_encdec:
        raise ConfigError(f"task is {'encoder-decoder' if task.is_encdec else 'decoder-only'} but the space task is "
                          f"{net.space.task!r}; use a matching space")
    acc = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    space = net.space
    start = 0
    out = Path(output_dir) if output_dir else None
    if out is not None and (out / STATE_FILE).exists() and (out / WEIGHTS_FILE).exists():
        from safetensors.torch import load_file
        net.load_state_dict(load_file(str(out / WEIGHTS_FILE)))
        start = json.loads((out / STATE_FILE).read_text()).get("step", 0)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    if start and out is not None and (out / OPT_FILE).exists():
        opt.load_state_dict(torch.load(out / OPT_FILE, weights_only=True))
    model, opt = acc.prepare(net, opt)
    g = torch.Generator().manual_seed(seed * 100_003 + acc.process_index * 7919 + start)
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="hat train",
               disable=not (progress and acc.is_local_main_process), dynamic_ncols=True, mininterval=1.0)
    step = start
    for step in bar:
        sub = sample_sub(space, step, seed)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        batch = {k: v.to(acc.device) for k, v in task.batch(g, batch_size).items()}
        loss = task.loss(model, sub, batch)
        acc.backward(loss)
        if clip:
            acc.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if len(losses) % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.3f}", dl=sub.decoder_layers)
        done = step + 1
        if out is not None and checkpoint_every and done % checkpoint_every == 0 and done < steps:
            _checkpoint(acc, net, opt, out, {"step": done, "train_loss": sum(losses[-20:]) / len(losses[-20:])})
        if eval_every and done % eval_every == 0 and acc.is_main_process:
            vl = evaluate(acc.unwrap_model(model), space.largest(), task, task.val_batches())
            bar.write(f"step {done}: val loss (largest) {vl:.4f}")
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            step = done
            break
    else:
        step = steps
    bar.close()
    net = acc.unwrap_model(model)
    vb = task.val_batches()
    state = {"step": step, "train_loss": (sum(losses[-20:]) / len(losses[-20:])) if losses else None,
             "val_loss_largest": evaluate(net, space.largest(), task, vb),
             "val_loss_smallest": evaluate(net, space.smallest(), task, vb),
             "seconds": time.perf_counter() - t0, "seed": seed}
    if out is not None:
        _checkpoint(acc, net, opt, out, state)
    return state


def _checkpoint(acc, net, opt, out: Path, state: dict) -> None:
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_supernet(acc.unwrap_model(net), out, state)
        torch.save(opt.state_dict(), out / OPT_FILE)
