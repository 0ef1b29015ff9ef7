"""Causal language-model training on plain text, shared by every NLP technique.

One code path for a single process and for several (``torchrun --nproc_per_node 2 script.py`` or
``accelerate launch --multi_gpu --num_processes 2 script.py``, CPU processes use gloo): the
model and optimizer go through ``accelerate.Accelerator.prepare``; each process
samples its own random blocks; evaluation blocks are split across processes and
the token losses are summed over all of them.

Python::

    from slimkit_nlp.train import train_causal_lm
    from slimkit_nlp.data import load_text
    metrics = train_causal_lm(model, load_text("train"), load_text("validation"),
                              block_size=128, batch_size=16, time_budget_s=120, lr=1e-3,
                              output_dir="runs/lite")
    metrics["eval_perplexity"]

Command line: ``slimkit nlp train --model lite --time-budget 120 --output-dir runs/lite``
(``--train-file``/``--eval-file`` for any text files; default: the built-in Shakespeare corpus).

The model is any module called as ``model(input_ids=LongTensor[B, T])`` that returns
logits ``[B, T, V]`` (a tensor, a tuple whose first item is the logits, or an
object with ``.logits``), e.g. every Hugging Face ``*ForCausalLM``. The loss is
next-token cross-entropy computed here (``labels`` is not passed), so it means
the same for every model.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from slimkit.errors import ConfigError, SlimkitError

TextLike = Union[str, Sequence[int], torch.Tensor]

__all__ = ["train_causal_lm", "evaluate_perplexity", "load_text_files", "encode_text", "lr_at"]


# -- data ---------------------------------------------------------------------------------
def load_text_files(paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> str:
    """Read text files with the ``datasets`` text loader (one document per file), joined by blank lines.

    ``paths``: a file, a folder (every ``*.txt`` inside) or a list of files.
    """
    if isinstance(paths, (str, os.PathLike)):
        p = Path(paths)
        files = sorted(str(f) for f in p.glob("*.txt")) if p.is_dir() else [str(p)]
    else:
        files = [str(f) for f in paths]
    if not files:
        raise SlimkitError(f"no text files found in {str(paths)!r}; pass a .txt file, a folder of .txt files or a list")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise SlimkitError(f"text file {missing[0]!r} does not exist; pass existing .txt files")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    ds = load_dataset("text", data_files={"train": files}, sample_by="document", split="train")
    return "\n\n".join(ds["text"])


def encode_text(text: TextLike, tokenizer: Any = None) -> torch.Tensor:
    """Token ids as a 1-D LongTensor: text through ``tokenizer.encode`` (default ``ByteTokenizer``), ids as given."""
    if isinstance(text, torch.Tensor):
        return text.reshape(-1).long()
    if isinstance(text, str):
        if tokenizer is None:
            from .data import ByteTokenizer
            tokenizer = ByteTokenizer()
        return torch.tensor(tokenizer.encode(text), dtype=torch.long)
    return torch.tensor(list(text), dtype=torch.long)


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise SlimkitError(f"the model returned {type(out).__name__}; it must return logits, a tuple or an object with .logits")


def _lm_loss(model, block: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of ``block`` [B, T+1] (inputs ``block[:, :-1]``, targets ``block[:, 1:]``)."""
    logits = _logits(model(input_ids=block[:, :-1]))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), block[:, 1:].reshape(-1), reduction=reduction)


def lr_at(step: int, total_steps: Optional[int], elapsed: float, time_budget_s: Optional[float],
          lr: float, warmup_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``.

    Progress is the larger of ``step / total_steps`` and ``elapsed / time_budget_s``,
    so a time-budgeted run decays over its budget.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    fracs = [0.0]
    if total_steps:
        fracs.append(step / total_steps)
    if time_budget_s:
        fracs.append(elapsed / time_budget_s)
    frac = min(1.0, max(fracs))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


@torch.no_grad()
def evaluate_perplexity(model, ids: torch.Tensor, block_size: int, batch_size: int = 16,
                        max_tokens: Optional[int] = None, accelerator=None) -> dict:
    """Perplexity over consecutive non-overlapping blocks of ``ids`` (first ``max_tokens`` tokens).

    Returns ``{"eval_loss": mean nats per token, "eval_perplexity": exp(loss), "eval_tokens": n}``.
    Under accelerate the blocks are split across processes and summed.
    """
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    n_blocks = (len(ids) - 1) // block_size
    if n_blocks < 1:
        raise SlimkitError(f"evaluation text has {len(ids)} tokens, fewer than block_size+1={block_size + 1}; "
                           "pass more text or a smaller block_size")
    blocks = torch.stack([ids[i * block_size: i * block_size + block_size + 1] for i in range(n_blocks)])
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    mine = blocks[rank::world]
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(0, len(mine), batch_size):
        b = mine[i: i + batch_size].to(device)
        total[0] += _lm_loss(model, b, reduction="sum").double()
        total[1] += b[:, 1:].numel()
    if accelerator is not None and world > 1:
        total = accelerator.reduce(total, reduction="sum")
    model.train(was_training)
    loss = (total[0] / total[1]).item()
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "eval_tokens": int(total[1].item())}


def _save_final(model, accelerator, directory: Path, state: dict) -> None:
    """The final model (``save_pretrained`` folder, or ``model.safetensors``) plus ``trainer_state.json``,
    written atomically by the main process."""
    from slimkit.io import atomic_folder, atomic_write_json

    inner = accelerator.unwrap_model(model)
    with atomic_folder(directory) as tmp:
        if hasattr(inner, "save_pretrained"):
            inner.save_pretrained(str(tmp))
        else:
            from safetensors.torch import save_model
            save_model(inner, str(tmp / "model.safetensors"))
        atomic_write_json(tmp / "trainer_state.json", state)


# -- training ------------------------------------------------------------------------------
def train_causal_lm(
    model: torch.nn.Module, train_text: TextLike, eval_text: Optional[TextLike] = None, *, tokenizer: Any = None,
    block_size: int = 128, batch_size: int = 16, steps: Optional[int] = None, time_budget_s: Optional[float] = None,
    lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 20, grad_clip: float = 1.0,
    eval_every: Optional[int] = None, eval_tokens: Optional[int] = 65536, eval_batch_size: Optional[int] = None,
    output_dir: Optional[Union[str, os.PathLike]] = None, save_every: Optional[int] = None, keep_checkpoints: int = 2,
    seed: int = 0, threads: Optional[int] = None, show_progress: bool = True, accelerator: Any = None,
    log_every: int = 10, callback: Optional[Callable[[dict], None]] = None, clock: str = "wall",
    resume: Optional[bool] = None, callbacks: Sequence[Callable[[int], None]] = (),
) -> dict:
    """Train ``model`` as a causal LM on ``train_text``; evaluate perplexity on ``eval_text``.

    Args:
        model: returns next-token logits ``[B, T, V]`` from ``model(input_ids=[B, T])``.
        train_text / eval_text: a string (tokenized with ``tokenizer``, default ``ByteTokenizer``),
            a list of ids or a 1-D LongTensor. Load files with ``load_text_files``.
        block_size: tokens per training sequence (T). batch_size: sequences per step and process.
        steps / time_budget_s: stop after this many optimizer steps and/or this many seconds of
            training (evaluation time excluded); at least one is required. The cosine LR
            schedule follows whichever ends first.
        lr, weight_decay, warmup_steps, grad_clip: AdamW settings.
        eval_every: evaluate every N steps (also always at the end when ``eval_text`` is given).
        eval_tokens: evaluate on the first N tokens of ``eval_text`` (None: all of it).
        output_dir: where ``metrics.json``, checkpoints (``checkpoints/step-NNNNNNN/`` every ``save_every``
            steps and on Ctrl-C / SIGTERM, the newest ``keep_checkpoints`` kept) and the final model
            (``final/``) go. Every write is atomic.
        threads: torch threads for this run (restored afterwards); None leaves them alone.
        accelerator: an ``accelerate.Accelerator``; None: a default one (GPU when available, otherwise
            CPU; several processes under ``torchrun`` / ``accelerate launch --multi_gpu --num_processes N``).
        callback: called with each logged row ``{"step", "loss", "lr", "elapsed_s"}``.
        clock: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.process_time``: CPU seconds of
            this process, fair when other programs share the machine) for ``time_budget_s`` and
            ``train_seconds``.
        resume: ``None`` continues from the newest checkpoint in ``output_dir`` when it was made with
            the same settings (and refuses one made with others); ``True`` requires one; ``False`` starts over.
        callbacks: called with the number of completed steps after every step.

    Each step's batch and dropout are seeded from ``(seed, step, process)`` (``slimkit.training``), so a
    run stopped by Ctrl-C (a checkpoint is written, then ``TrainingInterrupted`` is raised) or killed,
    and resumed, ends with the same weights as an uninterrupted run. With ``steps`` the learning rate
    follows transformers' cosine-with-min-lr schedule; a pure time budget decays over the budget.

    Returns:
        dict with ``steps``, ``tokens_seen``, ``train_seconds``, ``initial_loss`` (first logged
        mean loss), ``final_train_loss`` (mean of the last logging window), ``eval_loss``,
        ``eval_perplexity``, ``eval_tokens``, ``history`` (logged rows), ``evals`` and ``output_dir``.
    """
    _check_lm_settings(steps, time_budget_s, clock, block_size, batch_size)
    now = time.perf_counter if clock == "wall" else time.process_time
    from slimkit.training import TrainLoop, describe_model, tensor_digest

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        train_ids, eval_ids = _encode_training(model, train_text, eval_text, tokenizer, block_size)
        out_dir = Path(output_dir) if output_dir else None
        loop = TrainLoop(out_dir, save_every=save_every, keep=max(keep_checkpoints, 1), resume=resume, seed=seed,
                         accelerator=accelerator, callbacks=callbacks, fingerprint={
                             "trainer": "causal-lm", "model": describe_model(model),
                             "train_text": tensor_digest(train_ids), "block_size": block_size,
                             "batch_size": batch_size, "steps": steps, "time_budget_s": time_budget_s,
                             "lr": lr, "weight_decay": weight_decay, "warmup_steps": warmup_steps,
                             "grad_clip": grad_clip, "seed": seed, "clock": clock})
        acc = loop.accelerator
        model, opt = loop.prepare(model, _lm_optimizer(model, lr, weight_decay))
        sched = _lm_schedule(opt, steps, time_budget_s, warmup_steps)
        start, extra = loop.restore(model, opt, sched)
        model.train()
        log = _LmLog.resume(extra, start, block_size * batch_size * acc.num_processes)
        bar = _lm_bar(show_progress and acc.is_local_main_process, steps, time_budget_s, log)
        ebs = eval_batch_size or batch_size
        done = log.finished(steps, time_budget_s)
        with loop.signals():
            while not done:
                t0 = now()
                gen = loop.seed_step(log.step)
                cur_lr = _current_lr(opt, sched, log, steps, time_budget_s, lr, warmup_steps)
                loss = _lm_step(model, opt, sched, acc, train_ids, gen, block_size, batch_size, grad_clip)
                log.record(loss, now() - t0, lr)
                _update_bar(bar, log, steps, time_budget_s, cur_lr)
                done = _agree(acc, log.finished(steps, time_budget_s), time_budget_s is not None)
                if log.step % log_every == 0 or done:
                    log.write_row(cur_lr, callback)
                if eval_ids is not None and eval_every and log.step % eval_every == 0 and not done:
                    log.evaluate(model, eval_ids, block_size, ebs, eval_tokens, acc)
                loop.end_step(log.step, model, opt, sched, log.state, final=done)
        if bar is not None:
            bar.close()
        metrics = {"block_size": block_size, "batch_size": batch_size, "lr": lr, "num_processes": acc.num_processes,
                   "clock": clock, "resumed_from": str(loop.resumed_from) if loop.resumed_from else None,
                   "output_dir": str(out_dir) if out_dir else None}
        if eval_ids is not None:
            metrics.update(log.evaluate(model, eval_ids, block_size, ebs, eval_tokens, acc))
        metrics = {**log.summary(), **metrics, "history": log.history, "evals": log.evals}
        _save_run(model, acc, out_dir, log, metrics)
        return metrics
    finally:
        if threads:
            torch.set_num_threads(old_threads)


def _check_lm_settings(steps, time_budget_s, clock: str, block_size: int, batch_size: int) -> None:
    if steps is None and time_budget_s is None:
        raise ConfigError("train_causal_lm needs steps or time_budget_s; pass steps=N or time_budget_s=SECONDS")
    if steps is not None and steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}; pass a positive number of steps")
    if time_budget_s is not None and time_budget_s <= 0:
        raise ConfigError(f"time_budget_s must be positive, got {time_budget_s}; pass a number of seconds")
    if clock not in ("wall", "cpu"):
        raise ConfigError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if block_size < 1 or batch_size < 1:
        raise ConfigError(f"block_size and batch_size must be positive, got {block_size} and {batch_size}")


def _encode_training(model, train_text, eval_text, tokenizer, block_size: int):
    """``(train_ids, eval_ids or None)`` as 1-D LongTensors, checked against the block size and vocabulary."""
    train_ids = encode_text(train_text, tokenizer)
    if len(train_ids) < block_size + 2:
        raise SlimkitError(f"training text has {len(train_ids)} tokens, fewer than block_size+2={block_size + 2}; "
                           "pass more text or a smaller block_size")
    eval_ids = encode_text(eval_text, tokenizer) if eval_text is not None else None
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and int(train_ids.max()) >= vocab:
        raise SlimkitError(f"token id {int(train_ids.max())} is outside the model's vocabulary of {vocab}; "
                           "use a tokenizer that matches the model (ByteTokenizer needs vocab_size >= 256)")
    return train_ids, eval_ids


def _lm_optimizer(model, lr: float, weight_decay: float):
    """AdamW (betas 0.9, 0.98); biases and norm scales get no weight decay."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))


def _lm_schedule(opt, steps, time_budget_s, warmup_steps: int):
    """transformers' cosine-with-min-lr schedule over ``steps``; ``None`` for a time budget (see ``lr_at``)."""
    if steps is None or time_budget_s is not None:
        return None
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(opt, warmup_steps, steps, min_lr_rate=0.1)


def _current_lr(opt, sched, log, steps, time_budget_s, lr: float, warmup_steps: int) -> float:
    """The step's learning rate: the schedule's, or (time budget) ``lr_at`` set on every group."""
    if sched is not None:
        return sched.get_last_lr()[0]
    cur = lr_at(log.step, steps, log.train_s, time_budget_s, lr, warmup_steps)
    for g in opt.param_groups:
        g["lr"] = cur
    return cur


def _lm_step(model, opt, sched, acc, train_ids, gen, block_size: int, batch_size: int, grad_clip) -> float:
    """One optimizer step on ``batch_size`` random blocks drawn with ``gen``; returns the loss."""
    starts = torch.randint(0, len(train_ids) - block_size - 1, (batch_size,), generator=gen)
    block = torch.stack([train_ids[s: s + block_size + 1] for s in starts.tolist()]).to(acc.device)
    loss = _lm_loss(model, block)
    acc.backward(loss)
    if grad_clip:
        acc.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    if sched is not None:
        sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def _agree(acc, done: bool, needed: bool) -> bool:
    """Every process stops at the same step (a time budget ends at different moments per process)."""
    if acc.num_processes > 1 and needed:
        return bool(acc.reduce(torch.tensor([float(done)], device=acc.device), reduction="sum").item() > 0)
    return done


class _LmLog:
    """Steps, tokens, training seconds, logged rows and evaluations of a run (what a checkpoint keeps)."""

    def __init__(self, step: int, tokens_per_step: int, train_s: float = 0.0, history=None, evals=None,
                 initial_loss=None):
        self.step, self.tokens_per_step, self.train_s = step, tokens_per_step, train_s
        self.history, self.evals = list(history or []), list(evals or [])
        self.initial_loss, self.window = initial_loss, []

    @classmethod
    def resume(cls, extra: dict, step: int, tokens_per_step: int) -> "_LmLog":
        return cls(step, tokens_per_step, float(extra.get("train_seconds", 0.0)), extra.get("history"),
                   extra.get("evals"), extra.get("initial_loss"))

    @property
    def tokens(self) -> int:
        return self.step * self.tokens_per_step

    def finished(self, steps, time_budget_s) -> bool:
        return (steps is not None and self.step >= steps) or (time_budget_s is not None and self.train_s >= time_budget_s)

    def record(self, loss: float, seconds: float, lr: float) -> None:
        if not math.isfinite(loss):
            raise SlimkitError(f"training loss became {loss} at step {self.step + 1}; lower lr (now {lr})")
        self.step += 1
        self.train_s += seconds
        self.window.append(loss)
        if self.initial_loss is None:
            self.initial_loss = loss

    def write_row(self, cur_lr: float, callback) -> None:
        row = {"step": self.step, "loss": sum(self.window) / len(self.window), "lr": cur_lr,
               "elapsed_s": round(self.train_s, 3)}
        self.history.append(row)
        self.window = []
        if callback:
            callback(row)

    def evaluate(self, model, eval_ids, block_size: int, batch_size: int, eval_tokens, acc) -> dict:
        """Evaluation perplexity now (recorded in ``evals``)."""
        ev = evaluate_perplexity(model, eval_ids, block_size, batch_size, eval_tokens, acc)
        self.evals.append({"step": self.step, **ev})
        return ev

    def summary(self) -> dict:
        return {"steps": self.step, "tokens_seen": self.tokens, "train_seconds": round(self.train_s, 3),
                "initial_loss": self.initial_loss,
                "final_train_loss": self.history[-1]["loss"] if self.history else None}

    def state(self) -> dict:
        return {"history": self.history, "evals": self.evals, "initial_loss": self.initial_loss,
                "train_seconds": self.train_s}


def _lm_bar(enabled: bool, steps, time_budget_s, log: _LmLog):
    if not enabled:
        return None
    from slimkit.progress import bar as progress_bar

    return progress_bar(total=steps if steps else int(time_budget_s), initial=log.step if steps else int(log.train_s),
                        desc="train", unit="step" if steps else "s")


def _update_bar(bar, log: _LmLog, steps, time_budget_s, cur_lr: float) -> None:
    if bar is None:
        return
    if steps:
        bar.update(1)
    else:
        bar.n = min(int(log.train_s), int(time_budget_s))
        bar.refresh()
    bar.set_postfix(loss=f"{log.window[-1]:.3f}", lr=f"{cur_lr:.2e}")


def _save_run(model, acc, out_dir, log: _LmLog, metrics: dict) -> None:
    """The final model (``final/``) and ``metrics.json``, by the main process."""
    if out_dir is None:
        return
    from slimkit.io import atomic_write_json

    acc.wait_for_everyone()
    if acc.is_main_process:
        _save_final(model, acc, out_dir / "final", {"step": log.step, "history": log.history})
        atomic_write_json(out_dir / "metrics.json", metrics)
    acc.wait_for_everyone()


# -- models and command line -----------------------------------------------------------------
def build_causal_lm(kind: str = "gpt2", vocab_size: int = 256, n_layer: int = 4, d_model: int = 128,
                    n_head: int = 4, max_positions: int = 1024, **options: Any) -> torch.nn.Module:
    """A fresh small causal LM: ``kind`` is ``"gpt2"`` (GPT-2 architecture), ``"lite"`` (Lite
    Transformer, LSRA blocks) or a local folder saved with ``save_pretrained`` (loaded with
    ``AutoModelForCausalLM``). ``options`` go to the config (e.g. ``kernel_sizes`` for lite)."""
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=d_model, n_layer=n_layer,
                         n_head=n_head, bos_token_id=0, eos_token_id=0, **options)
        return GPT2LMHeadModel(cfg)
    if kind == "lite":
        from .lsra.modeling import LiteTransformerConfig, LiteTransformerForCausalLM

        cfg = LiteTransformerConfig(vocab_size=vocab_size, d_model=d_model, decoder_layers=n_layer,
                                    n_head=n_head, max_position_embeddings=max_positions, **options)
        return LiteTransformerForCausalLM(cfg)
    if Path(kind).is_dir():
        from transformers import AutoModelForCausalLM

        from . import lsra  # noqa: F401  (registers the Lite Transformer with the Auto classes)
        return AutoModelForCausalLM.from_pretrained(kind)
    raise ConfigError(f"unknown model {kind!r}; use 'gpt2', 'lite' or a folder saved with save_pretrained")


def _train_command():
    import click

    @click.command("train")
    @click.option("--model", "model_kind", default="gpt2", show_default=True,
                  help="'gpt2', 'lite' (Lite Transformer) or a folder saved with save_pretrained.")
    @click.option("--train-file", multiple=True, type=click.Path(exists=True),
                  help="Text file(s) or folder(s) to train on (default: the built-in Shakespeare corpus).")
    @click.option("--eval-file", multiple=True, type=click.Path(exists=True),
                  help="Text file(s) for evaluation perplexity (default: held-out Shakespeare plays).")
    @click.option("--n-layer", default=4, show_default=True)
    @click.option("--d-model", default=128, show_default=True)
    @click.option("--n-head", default=4, show_default=True)
    @click.option("--block-size", default=128, show_default=True)
    @click.option("--batch-size", default=16, show_default=True)
    @click.option("--steps", type=int, default=None, help="Optimizer steps.")
    @click.option("--time-budget", type=float, default=None, help="Seconds of training (default 60 if no --steps).")
    @click.option("--lr", default=1e-3, show_default=True)
    @click.option("--eval-every", type=int, default=None)
    @click.option("--eval-tokens", type=int, default=65536, show_default=True)
    @click.option("--save-every", type=int, default=100, show_default=True,
                  help="Checkpoint every N steps (0: only on Ctrl-C / SIGTERM).")
    @click.option("--resume/--no-resume", default=None,
                  help="Default: continue from the output folder's newest checkpoint when its settings match. "
                       "--resume requires one; --no-resume deletes the folder's checkpoints and starts over.")
    @click.option("--output-dir", type=click.Path(file_okay=False), default=None,
                  help="Checkpoints, final model and metrics.json go here.")
    @click.option("--threads", type=int, default=None)
    @click.option("--seed", default=0, show_default=True)
    @click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
                  help="What --time-budget counts: wall-clock or CPU seconds of this process.")
    def train(model_kind, train_file, eval_file, n_layer, d_model, n_head, block_size, batch_size, steps,
              time_budget, lr, eval_every, eval_tokens, save_every, resume, output_dir, threads, seed, clock):
        """Train a causal language model on plain text (accelerate; also under `accelerate launch`)."""
        torch.manual_seed(seed)
        if steps is None and time_budget is None:
            time_budget = 60.0
        if train_file:
            train_text = "\n\n".join(load_text_files(f) for f in train_file)
        else:
            from .data import load_text
            train_text = load_text("train")
        if eval_file:
            eval_text = "\n\n".join(load_text_files(f) for f in eval_file)
        elif train_file:
            eval_text = None
        else:
            from .data import load_text
            eval_text = load_text("validation")
        model = build_causal_lm(model_kind, n_layer=n_layer, d_model=d_model, n_head=n_head,
                                max_positions=max(block_size, 128))
        n_params = sum(p.numel() for p in model.parameters())
        click.echo(f"model {model_kind}: {n_params / 1e6:.2f}M parameters")
        from slimkit.training import TrainingInterrupted, interrupted_exit

        try:
            m = train_causal_lm(model, train_text, eval_text, block_size=block_size, batch_size=batch_size,
                                steps=steps, time_budget_s=time_budget, lr=lr, eval_every=eval_every,
                                eval_tokens=eval_tokens, output_dir=output_dir, save_every=save_every,
                                threads=threads, seed=seed, clock=clock, resume=resume)
        except TrainingInterrupted as e:
            interrupted_exit(e, click.echo)
        line = f"steps {m['steps']}  train loss {m['final_train_loss']:.4f}  ({m['train_seconds']:.1f} s)"
        if "eval_perplexity" in m:
            line += f"  eval loss {m['eval_loss']:.4f}  perplexity {m['eval_perplexity']:.3f}"
        click.echo(line)
        if output_dir:
            click.echo(f"saved to {output_dir}/final (metrics in {output_dir}/metrics.json)")

    return train

