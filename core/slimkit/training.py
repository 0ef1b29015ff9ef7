"""The one training-loop utility every slimkit trainer uses (video, causal LM, HAT, SpAtten distillation).

It owns what every trainer needs and none should write twice:

- **accelerate setup** (:func:`make_accelerator`): GPU when there is one, gloo on CPU under
  ``torchrun`` / ``accelerate launch --multi_gpu``; a warning when fewer processes started than
  were asked for (``accelerate launch --cpu --num_processes 2`` starts one without mpirun).
- **per-step randomness** (:meth:`TrainLoop.seed_step`): every step's batch and dropout come from a
  seed derived from ``(seed, step, process)``, so a resumed run replays exactly what an
  uninterrupted one would have done, and the data position is the step number.
- **checkpoints** (:meth:`TrainLoop.save`): every ``save_every`` steps and when SIGINT or SIGTERM
  arrives, into ``OUTPUT/checkpoints/step-NNNNNNN/``, written atomically (``slimkit.io.atomic_folder``),
  newest ``keep`` kept. Only the main process writes. Pickle-free: the model and the optimizer's
  tensors are safetensors, the rest JSON.
- **resume** (:meth:`TrainLoop.restore`): by default a run continues from the newest checkpoint
  in its output folder when that checkpoint was made with the same settings (the trainer's
  ``fingerprint``); a checkpoint made with other settings is refused, naming the settings that differ.

``accelerate.Accelerator.save_state`` is not used: it unpickles its random-state files on load and
writes in place, so a kill during a save leaves a partial checkpoint.

A trainer's loop::

    loop = TrainLoop(output_dir, fingerprint={...}, save_every=100, seed=seed)
    model, opt = loop.prepare(model, opt)
    sched = transformers.get_scheduler("cosine", opt, warmup, total)
    start, extra = loop.restore(model, opt, sched)          # (0, {}) on a fresh run
    with loop.signals():
        for step in range(start, total):
            gen = loop.seed_step(step)                         # torch/random/numpy seeded; a generator
            ... forward / backward / opt.step() / sched.step() ...
            loop.end_step(step + 1, model, opt, sched, lambda: {"history": history})
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from .errors import ConfigError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPT_TENSORS, OPT_META, SCHED_FILE = "optimizer.safetensors", "optimizer.json", "scheduler.json"
FORMAT = "slimkit-train-checkpoint/1"


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by a trainer after SIGINT/SIGTERM, once the checkpoint of the current step is saved.

    ``step``: the last completed step; ``checkpoint``: the folder written (``None`` without an output folder).
    """

    def __init__(self, step: int, checkpoint: Optional[Path]):
        self.step, self.checkpoint = step, checkpoint
        where = (f"checkpoint saved in {str(checkpoint)!r}; run the same command again to resume"
                 if checkpoint else "no output folder was given, so nothing was saved")
        super().__init__(f"training interrupted after step {step}: {where}")

    def __str__(self) -> str:
        return str(self.args[0])


# -- accelerate -----------------------------------------------------------------------------------
def make_accelerator(cpu: Optional[bool] = None, mixed_precision: Optional[str] = None,
                     kwargs_handlers: Sequence[Any] = ()):
    """An ``accelerate.Accelerator`` for this machine: CUDA when available, otherwise CPU processes
    that synchronise with gloo (several under ``torchrun`` or ``accelerate launch --multi_gpu``)."""
    from accelerate import Accelerator

    kwargs: dict = {"kwargs_handlers": list(kwargs_handlers)}
    if cpu is None:
        cpu = not torch.cuda.is_available()
    if cpu:
        kwargs["cpu"] = True
    if mixed_precision and mixed_precision != "no":
        kwargs["mixed_precision"] = mixed_precision
    acc = Accelerator(**kwargs)
    warn_missing_processes(acc.num_processes)
    return acc


def _launcher_argv() -> list[str]:
    """The parent process's command line (Linux ``/proc``), where launchers such as ``accelerate launch`` run."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def requested_processes(argv: Optional[Sequence[str]] = None) -> Optional[int]:
    """How many processes ``accelerate launch`` was asked for (``--num_processes N`` on its command line,
    read from the parent process unless ``argv`` is given); ``None`` when not launched that way."""
    argv = list(_launcher_argv() if argv is None else argv)
    if not any("accelerate" in a for a in argv[:3]) or "launch" not in argv:
        return None
    for i, a in enumerate(argv):
        for flag in ("--num_processes", "--num-processes"):
            if a == flag and i + 1 < len(argv) and argv[i + 1].isdigit():
                return int(argv[i + 1])
            if a.startswith(flag + "=") and a.split("=", 1)[1].isdigit():
                return int(a.split("=", 1)[1])
    return None


def warn_missing_processes(started: int) -> None:
    """Warn when fewer processes run than were requested (e.g. ``accelerate launch --cpu --num_processes 2``,
    which starts one process unless launched through mpirun)."""
    asked = requested_processes()
    if asked is not None and asked > started:
        warnings.warn(f"{asked} processes were requested but only {started} started; on a machine without GPUs "
                      f"use `accelerate launch --multi_gpu --num_processes {asked}` or "
                      f"`torchrun --nproc_per_node {asked}`", RuntimeWarning, stacklevel=3)


# -- optimizer / scheduler state without pickle -----------------------------------------------------
def optimizer_state_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``"PARAM/KEY"``) and JSON-ready metadata."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for pid, per in state["state"].items():
        for key, value in per.items():
            if torch.is_tensor(value):
                tensors[f"{pid}/{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`optimizer_state_to_files`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        pid, key = name.split("/", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, per in meta.get("plain_state", {}).items():
        state.setdefault(int(pid), {}).update(per)
    return {"state": state, "param_groups": meta["param_groups"]}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if torch.is_tensor(o) else str(o)))


# -- the loop utility ------------------------------------------------------------------------------
def derive_seed(seed: int, step: int, process: int) -> int:
    """A 63-bit seed for one step on one process (stable across runs and Python versions)."""
    digest = hashlib.blake2b(f"{seed}/{step}/{process}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def describe_model(model) -> dict:
    """JSON-ready identity of a model for a fingerprint: class, Hugging Face config (when it has one),
    applied slimkit techniques and parameter shapes' count."""
    inner = getattr(model, "module", model)
    out: dict = {"class": type(inner).__qualname__,
                 "parameters": int(sum(p.numel() for p in inner.parameters()))}
    cfg = getattr(inner, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        volatile = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "_attn_implementation_autoset",
                    "_commit_hash", "slimkit_spatten"}
        out["config"] = {k: v for k, v in cfg.to_dict().items() if k not in volatile}
    applied = getattr(inner, "slimkit_configs", None) or []
    out["techniques"] = [c.to_dict() for c in applied]
    return _jsonable(out)


def tensor_digest(t: torch.Tensor) -> str:
    """A short SHA-256 of a tensor's values (e.g. the training token ids), for fingerprints."""
    data = t.detach().cpu().contiguous()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16] + f"/{tuple(data.shape)}"


def fingerprint_differences(saved: dict, now: dict) -> list[str]:
    """``["lr: 0.001 -> 0.002", ...]`` for the settings that differ between two fingerprints."""
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k, '(unset)')!r} -> {now.get(k, '(unset)')!r}" for k in keys
            if _jsonable(saved.get(k)) != _jsonable(now.get(k))]


class TrainLoop:
    """Checkpoints, resume, signals and per-step seeding for one training run (see the module docstring).

    Args:
        output_dir: the run's folder (``None``: no checkpoints, no resume).
        fingerprint: JSON-ready settings that must match for a checkpoint to be resumed
            (model and technique configs, data, optimizer, schedule, total steps, processes...).
        save_every: checkpoint every N steps (``None`` or 0: only on a signal).
        keep: checkpoints kept (newest first).
        resume: ``None`` resume when a compatible checkpoint exists (refuse an incompatible one);
            ``True`` require one; ``False`` start over (the folder's old checkpoints are deleted).
        seed: the run's seed.
        accelerator: an ``accelerate.Accelerator`` (default: :func:`make_accelerator`).
    """

    def __init__(self, output_dir: Optional[str | os.PathLike], *, fingerprint: dict, save_every: Optional[int] = None,
                 keep: int = 2, resume: Optional[bool] = None, seed: int = 0, accelerator: Any = None,
                 cpu: Optional[bool] = None, mixed_precision: Optional[str] = None,
                 kwargs_handlers: Sequence[Any] = (), callbacks: Sequence[Callable[[int], None]] = ()):
        if save_every is not None and save_every < 0:
            raise ConfigError(f"save_every must be a positive number of steps (or 0/None for none), got {save_every}")
        if keep < 1:
            raise ConfigError(f"keep must be at least 1 checkpoint, got {keep}")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.fingerprint = _jsonable(dict(fingerprint))
        self.save_every = save_every or 0
        self.keep, self.resume, self.seed = keep, resume, seed
        self.callbacks = list(callbacks)
        self.accelerator = accelerator or make_accelerator(cpu, mixed_precision, kwargs_handlers)
        self._stop = threading.Event()
        self.resumed_from: Optional[Path] = None
        self.fingerprint.setdefault("num_processes", self.accelerator.num_processes)

    # -- basics
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def prepare(self, *objects):
        """``accelerator.prepare`` (model, optimizer, data loaders). Schedulers are not passed through
        accelerate: it would step them once per process per step."""
        return self.accelerator.prepare(*objects)

    def seed_step(self, step: int) -> torch.Generator:
        """Seed torch (CPU and CUDA), ``random`` and numpy for ``step`` on this process; return a fresh
        ``torch.Generator`` with the same seed (for sampling the step's batch)."""
        s = derive_seed(self.seed, step, self.accelerator.process_index)
        torch.manual_seed(s)
        random.seed(s)
        try:
            import numpy as np

            np.random.seed(s % (1 << 32))
        except ImportError:  # pragma: no cover
            pass
        return torch.Generator().manual_seed(s)

    # -- checkpoints
    @property
    def checkpoint_root(self) -> Optional[Path]:
        return self.output_dir / CHECKPOINTS if self.output_dir is not None else None

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints in the output folder, oldest first."""
        root = self.checkpoint_root
        if root is None or not root.is_dir():
            return []
        found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).exists()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def save(self, step: int, model, optimizer, scheduler=None, extra: Optional[dict] = None) -> Optional[Path]:
        """Write the checkpoint of ``step`` (main process; every process waits for it); return its folder."""
        from .io import atomic_folder, atomic_write_json, save_safetensors

        if self.checkpoint_root is None:
            return None
        target = self.checkpoint_root / f"step-{step:07d}"
        self.accelerator.wait_for_everyone()
        if self.is_main:
            from safetensors.torch import save_model

            with atomic_folder(target) as tmp:
                save_model(self.accelerator.unwrap_model(model), str(tmp / MODEL_FILE))
                tensors, meta = optimizer_state_to_files(optimizer.state_dict())
                save_safetensors(tensors, tmp / OPT_TENSORS)
                atomic_write_json(tmp / OPT_META, _jsonable(meta))
                if scheduler is not None:
                    atomic_write_json(tmp / SCHED_FILE, _jsonable(scheduler.state_dict()))
                from ._version import __version__

                atomic_write_json(tmp / STATE_FILE, {"format": FORMAT, "step": step, "slimkit_version": __version__,
                                                     "fingerprint": self.fingerprint, "extra": _jsonable(extra or {})})
            for old in self.checkpoints()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return target

    def restore(self, model, optimizer, scheduler=None) -> tuple[int, dict]:
        """Load the newest compatible checkpoint into the (prepared) model, optimizer and scheduler.

        Returns ``(step, extra)``; ``(0, {})`` when there is nothing to resume. Refuses a checkpoint
        made with other settings, naming them.
        """
        from .io import load_safetensors, read_json

        if self.resume is False and self.checkpoint_root is not None:
            self.accelerator.wait_for_everyone()
            if self.is_main:
                shutil.rmtree(self.checkpoint_root, ignore_errors=True)
            self.accelerator.wait_for_everyone()
            return 0, {}
        found = self.checkpoints()
        if not found:
            if self.resume:
                raise ConfigError(f"nothing to resume: {str(self.checkpoint_root)!r} holds no checkpoint; "
                                  f"run without --resume to start")
            return 0, {}
        folder = found[-1]
        fix = "delete that checkpoint folder to resume from an older one, or run with --no-resume to start over"
        state = read_json(folder / STATE_FILE, what="training state", fix=fix)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ConfigError(f"{str(folder)!r} is not a slimkit training checkpoint ({FORMAT}); {fix}")
        diffs = fingerprint_differences(state.get("fingerprint", {}), self.fingerprint)
        if diffs:
            raise ConfigError(f"the checkpoint in {str(folder)!r} was made with other settings ({'; '.join(diffs)}); "
                              f"resume with the same settings, use another output folder, or pass --no-resume "
                              f"to start over")
        from .api import load_weights_checked

        load_weights_checked(self.accelerator.unwrap_model(model), folder / MODEL_FILE)
        tensors = load_safetensors(folder / OPT_TENSORS, fix=fix)
        meta = read_json(folder / OPT_META, what="optimizer state", fix=fix)
        optimizer.load_state_dict(optimizer_state_from_files(tensors, meta))
        if scheduler is not None:
            scheduler.load_state_dict(read_json(folder / SCHED_FILE, what="scheduler state", fix=fix))
        self.resumed_from = folder
        return int(state["step"]), dict(state.get("extra", {}))

    # -- signals
    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Within the block, SIGINT/SIGTERM ask for a checkpoint and a clean stop at the end of the
        current step (:meth:`end_step` raises :class:`TrainingInterrupted`); a second SIGINT stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask_to_stop(signum, frame):
            if self._stop.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop.set()

        old = {s: signal.signal(s, ask_to_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def stop_requested(self) -> bool:
        """Whether any process received SIGINT/SIGTERM (agreed across processes)."""
        flag = self._stop.is_set()
        if self.accelerator.num_processes > 1:
            t = torch.tensor([float(flag)], device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        return flag

    def end_step(self, step: int, model, optimizer, scheduler=None, extra: Callable[[], dict] | None = None,
                 final: bool = False) -> None:
        """Call after each optimizer step with the number of completed steps: runs the callbacks,
        checkpoints every ``save_every`` steps and after the last step (``final``; so rerunning a finished
        run's command does no work), and on a signal saves then raises :class:`TrainingInterrupted`."""
        for cb in self.callbacks:
            cb(step)
        stop = self.stop_requested()
        due = final or (self.save_every and step % self.save_every == 0)
        if due or stop:
            path = self.save(step, model, optimizer, scheduler, extra() if extra else None)
            if stop:
                raise TrainingInterrupted(step, path)


def forget_checkpoints(output_dir: str | os.PathLike) -> None:
    """Delete a run's checkpoints (after its final model is safely saved, if a trainer wants that)."""
    root = Path(output_dir) / CHECKPOINTS
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)


def interrupted_exit(err: TrainingInterrupted, echo: Callable[[str], None]) -> None:
    """CLI helper: print the one-line interruption notice and exit with code 130 (as for Ctrl-C)."""
    echo(str(err))
    raise SystemExit(130)


__all__ = ["TrainLoop", "TrainingInterrupted", "make_accelerator", "derive_seed", "fingerprint_differences",
           "optimizer_state_to_files", "optimizer_state_from_files", "warn_missing_processes", "interrupted_exit",
           "forget_checkpoints", "describe_model", "tensor_digest"]
