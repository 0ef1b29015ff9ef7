"""SuperTransformer training on the shared trainer (``slimkit.training``): one SubTransformer per
step, sampled uniformly and seeded by the step number (every process trains the same one; each
process draws its own batch, seeded by ``(seed, step, process)``). Progress bar, checkpoints every
``checkpoint_every`` steps and on Ctrl-C / SIGTERM, resume by default.

Output folder: ``space.yaml`` (the design space), ``supernet.safetensors`` (the shared weights) and
``train_state.json`` (step, losses), written atomically by the main process; training checkpoints
(weights, optimizer, schedule) under ``checkpoints/step-NNNNNNN/``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from slimkit.errors import ConfigError

from .space import HatSpace, sample_sub
from .supernet import SuperTransformer
from .tasks import evaluate

SPACE_FILE, WEIGHTS_FILE, STATE_FILE = "space.yaml", "supernet.safetensors", "train_state.json"


def save_supernet(net: SuperTransformer, directory: str | Path, state: dict | None = None) -> Path:
    """Write the space, the weights and ``state`` into ``directory`` atomically (a ``checkpoints/``
    sub-folder of training checkpoints already there is kept)."""
    from safetensors.torch import save_file

    from slimkit.io import atomic_folder, atomic_write_json
    from slimkit.training import CHECKPOINTS

    d = Path(directory)
    with atomic_folder(d, keep=(CHECKPOINTS,)) as tmp:
        net.space.save(tmp / SPACE_FILE)
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        if state is not None:
            atomic_write_json(tmp / STATE_FILE, state)
    return d


def load_supernet(directory: str | Path) -> SuperTransformer:
    """A SuperTransformer from a checkpoint folder written by ``save_supernet`` / ``slimkit hat train``."""
    from slimkit.io import load_safetensors, recover_folder

    d = recover_folder(directory)
    if not (d / SPACE_FILE).exists() or not (d / WEIGHTS_FILE).exists():
        raise ConfigError(f"{str(d)!r} is not a SuperTransformer checkpoint (needs {SPACE_FILE} and {WEIGHTS_FILE}); "
                          f"train one with `slimkit hat train --output-dir DIR`")
    net = SuperTransformer(HatSpace.load(d / SPACE_FILE))
    fix = "train it again with `slimkit hat train --output-dir DIR`"
    state = load_safetensors(d / WEIGHTS_FILE, fix=fix)
    own = net.state_dict()
    bad = sorted(set(own) ^ set(state)) or [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise ConfigError(f"{str(d / WEIGHTS_FILE)!r} does not match the space in {SPACE_FILE} (e.g. {bad[0]!r}); {fix}")
    net.load_state_dict(state)
    return net.eval()


def read_train_state(directory: str | Path) -> dict:
    """The ``train_state.json`` of a finished (or saved) SuperTransformer folder; ``{}`` when absent."""
    from slimkit.io import read_json

    p = Path(directory) / STATE_FILE
    return read_json(p, what="training state", fix="train it again") if p.exists() else {}


def _check_task(net: SuperTransformer, task) -> None:
    """``ConfigError`` when ``task`` does not fit the SuperTransformer's space."""
    if task.vocab_size > net.space.vocab_size:
        raise ConfigError(f"the task needs vocab_size {task.vocab_size} but the space has {net.space.vocab_size}; "
                          f"set vocab_size in the space")
    if task.is_encdec != net.space.is_encdec:
        raise ConfigError(f"task is {'encoder-decoder' if task.is_encdec else 'decoder-only'} but the space task is "
                          f"{net.space.task!r}; use a matching space")


def _final_state(net: SuperTransformer, task, step: int, losses: list, seconds: float, seed: int, acc, loop) -> dict:
    """The returned (and saved) summary: step, recent train loss, validation loss of the largest and the
    smallest SubTransformer."""
    vb = task.val_batches()
    tail = losses[-20:]
    return {"step": step, "train_loss": (sum(tail) / len(tail)) if tail else None,
            "val_loss_largest": evaluate(net, net.space.largest(), task, vb),
            "val_loss_smallest": evaluate(net, net.space.smallest(), task, vb),
            "seconds": seconds, "seed": seed, "num_processes": acc.num_processes,
            "resumed_from": str(loop.resumed_from) if loop.resumed_from else None}


def train_supernet(net: SuperTransformer, task, steps: int = 1000, batch_size: int = 32, lr: float = 1e-3,
                   warmup: int = 50, weight_decay: float = 0.01, seed: int = 0, output_dir: str | Path | None = None,
                   checkpoint_every: int = 200, eval_every: int = 0, time_budget_s: float | None = None,
                   progress: bool = True, clip: float = 1.0, resume: Optional[bool] = None,
                   callbacks: Sequence[Callable[[int], None]] = (), accelerator=None) -> dict:
    """Train ``net`` on ``task`` for ``steps`` updates (or until ``time_budget_s``).

    Step ``s`` trains ``sample_sub(space, s, seed)`` on every process. The learning rate follows
    transformers' cosine schedule with ``warmup`` steps. ``resume``: ``None`` continues from a
    compatible checkpoint in ``output_dir`` (refusing one made with other settings), ``True`` requires
    one, ``False`` starts over. Ctrl-C saves a checkpoint and raises ``slimkit.training.TrainingInterrupted``.
    Returns ``{"step", "train_loss", "val_loss_largest", "val_loss_smallest", "seconds", "seed"}``.
    """
    from accelerate.utils import DistributedDataParallelKwargs
    from transformers import get_cosine_schedule_with_warmup

    from slimkit.progress import bar as progress_bar
    from slimkit.training import TrainLoop, describe_model, make_accelerator

    _check_task(net, task)
    acc = accelerator or make_accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    space = net.space
    loop = TrainLoop(output_dir, save_every=checkpoint_every, resume=resume, seed=seed, accelerator=acc,
                     callbacks=callbacks, fingerprint={
                         "trainer": "hat-supernet", "model": describe_model(net), "space": space.to_dict(),
                         "task": repr(getattr(task, "kind", type(task).__name__)), "steps": steps,
                         "batch_size": batch_size, "lr": lr, "warmup": warmup, "weight_decay": weight_decay,
                         "clip": clip, "seed": seed, "time_budget_s": time_budget_s})
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    model, opt = loop.prepare(net, opt)
    sched = get_cosine_schedule_with_warmup(opt, warmup, steps)
    start, extra = loop.restore(model, opt, sched)
    losses: list[float] = list(extra.get("losses", []))
    elapsed0 = float(extra.get("seconds", 0.0))
    model.train()
    t0 = time.perf_counter()
    bar = progress_bar(total=steps, initial=start, desc="hat train", unit="step", mininterval=1.0,
                       enabled=progress and acc.is_local_main_process)

    def state() -> dict:
        return {"losses": losses[-100:], "seconds": elapsed0 + time.perf_counter() - t0}

    step = start
    with loop.signals():
        while step < steps:
            sub = sample_sub(space, step, seed)
            gen = loop.seed_step(step)
            batch = {k: v.to(acc.device) for k, v in task.batch(gen, batch_size).items()}
            loss = task.loss(model, sub, batch)
            acc.backward(loss)
            if clip:
                acc.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            if len(losses) % 10 == 0:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.3f}", dl=sub.decoder_layers)
            out_of_time = time_budget_s is not None and elapsed0 + time.perf_counter() - t0 > time_budget_s
            if acc.num_processes > 1 and time_budget_s is not None:  # every process stops at the same step
                flag = acc.reduce(torch.tensor([float(out_of_time)], device=acc.device), reduction="sum")
                out_of_time = bool(flag.item() > 0)
            if eval_every and step % eval_every == 0 and acc.is_main_process:
                vl = evaluate(acc.unwrap_model(model), space.largest(), task, task.val_batches())
                bar.write(f"step {step}: val loss (largest) {vl:.4f}")
            loop.end_step(step, model, opt, sched, state, final=step >= steps or out_of_time)
            if out_of_time:
                break
    bar.close()
    net = acc.unwrap_model(model)
    result = _final_state(net, task, step, losses, elapsed0 + time.perf_counter() - t0, seed, acc, loop)
    acc.wait_for_everyone()
    if output_dir is not None and acc.is_main_process:
        save_supernet(net, output_dir, result)
    acc.wait_for_everyone()
    return result
