"""Training video classifiers with Hugging Face accelerate (``train`` and ``slimkit video train``).

The same code runs single-process here and under ``accelerate launch`` on many GPUs or machines
(on a machine without GPUs, ``accelerate launch --multi_gpu --num_processes 2 script.py`` or
``torchrun --nproc_per_node 2 script.py`` runs two CPU processes that synchronise with gloo;
``accelerate launch --cpu`` starts several processes only through mpirun).

    from slimkit_video.classifier import VideoClassifier, tiny_resnet
    from slimkit_video.data import SyntheticTemporalDataset
    from slimkit_video.train import train, load_checkpoint

    clf = slimkit.apply(VideoClassifier(tiny_resnet(), n_segment=8, num_classes=2), "tsm", n_segment=8)
    result = train(clf, SyntheticTemporalDataset(200), SyntheticTemporalDataset(50, seed=1),
                   epochs=3, batch_size=8, lr=1e-3, output_dir="runs/tsm")
    result.accuracy                       # final evaluation accuracy (0..1)
    clf2 = load_checkpoint("runs/tsm")    # rebuilt from the checkpoint: configs + safetensors

``model(clips)`` must map ``(N, T, C, H, W)`` float clips to ``(N, K)`` logits (a
``VideoClassifier`` does); datasets yield ``(clip, label)`` pairs (``VideoDataset``,
``SyntheticTemporalDataset``). The checkpoint is ``slimkit.save_pretrained`` output (technique
configs + ``model.safetensors``) plus ``video_classifier.json`` describing the classifier and
its HF backbone config, so ``load_checkpoint(dir)`` needs nothing else.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.errors import ConfigError

CLASSIFIER_FILE = "video_classifier.json"


@dataclass
class TrainResult:
    """What ``train`` returns (identical on every process).

    ``losses``: mean training loss over all processes, per step; ``epoch_losses`` per epoch;
    ``eval_accuracy``: accuracy on ``eval_data`` after each epoch (0..1); ``accuracy``: the last one
    (``None`` without eval data); ``seconds``: wall time; ``output_dir``: the checkpoint folder.
    """

    losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    accuracy: Optional[float] = None
    steps: int = 0
    seconds: float = 0.0
    num_processes: int = 1
    output_dir: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


def _logits(out: Any) -> torch.Tensor:
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _make_accelerator(cpu: Optional[bool], mixed_precision: Optional[str]):
    from slimkit.training import make_accelerator

    return make_accelerator(cpu, mixed_precision)


def evaluate(model: nn.Module, loader, accelerator=None, progress: bool = False) -> float:
    """Top-1 accuracy (0..1) of ``model`` over ``loader`` (gathered over processes when prepared)."""
    from tqdm.auto import tqdm

    model.eval()
    correct = total = 0
    main = accelerator is None or accelerator.is_local_main_process
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    with torch.no_grad():
        for clips, labels in tqdm(loader, desc="eval", disable=not (progress and main), leave=False):
            clips, labels = clips.to(device), labels.to(device)
            pred = _logits(model(clips)).argmax(-1)
            if accelerator is not None:
                pred, labels = accelerator.gather_for_metrics((pred, labels))
            correct += int((pred == labels).sum())
            total += int(labels.numel())
    return correct / max(total, 1)


class EpochBatches:
    """The training batches of a run as a pure function of ``(seed, epoch, process)``.

    Epoch ``e`` visits ``torch.randperm(len(dataset))`` drawn from ``derive_seed(seed, e, -1)`` (the same on
    every process); process ``r`` of ``w`` takes every ``w``-th index from ``r``, in batches of ``batch_size``
    (the last partial batch dropped when a full one exists). Global step ``s`` is batch ``s % per_epoch`` of
    epoch ``s // per_epoch``, so the data position of a resumed run is its step.
    """

    def __init__(self, n: int, batch_size: int, seed: int, process: int, processes: int):
        if n < processes:
            raise ConfigError(f"the training data has {n} clips, fewer than the {processes} processes; "
                              f"use more data or fewer processes")
        self.n, self.batch_size, self.seed, self.process, self.processes = n, batch_size, seed, process, processes
        mine = n // processes
        self.per_epoch = max(mine // batch_size, 1)
        self._cache: tuple[int, list[int]] | None = None

    def _order(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            from slimkit.training import derive_seed

            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, -1))
            perm = torch.randperm(self.n, generator=g)[: (self.n // self.processes) * self.processes]
            self._cache = (epoch, perm[self.process::self.processes].tolist())
        return self._cache[1]

    def indices(self, step: int) -> list[int]:
        """Dataset indices of this process's batch at global ``step``."""
        epoch, i = divmod(step, self.per_epoch)
        return self._order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]


def _reseed_dataset(dataset, generator: torch.Generator) -> None:
    """Datasets that keep their own ``random.Random`` in ``.rng`` (``VideoDataset``'s frame offsets) are
    reseeded from the step's generator, so their augmentation is a function of the step too."""
    import random

    rng = getattr(dataset, "rng", None)
    if isinstance(rng, random.Random):
        rng.seed(int(torch.randint(0, 2**62, (1,), generator=generator)))


def _fetch(dataset, indices: list[int], collate, device):
    clips, labels = collate([dataset[i] for i in indices])
    return clips.to(device), labels.to(device)


def _unpack_data(data, batch_size: int):
    """``(dataset, batch_size, collate_fn)`` from a dataset or a ``DataLoader``."""
    from torch.utils.data import DataLoader, default_collate

    if isinstance(data, DataLoader):
        return data.dataset, data.batch_size or batch_size, data.collate_fn or default_collate
    return data, batch_size, default_collate


def train(model: nn.Module, train_data, eval_data=None, *, epochs: int = 1, max_steps: Optional[int] = None,
          batch_size: int = 8, eval_batch_size: Optional[int] = None, lr: float = 1e-3,
          optimizer: str = "adamw", weight_decay: float = 1e-4, momentum: float = 0.9,
          schedule: str = "cosine", warmup_steps: int = 0, grad_clip: Optional[float] = 20.0,
          num_workers: int = 0, seed: int = 0, output_dir: Optional[str] = None,
          metadata: Optional[dict] = None, progress: bool = True, cpu: Optional[bool] = None,
          mixed_precision: Optional[str] = None, accelerator=None, save_every: Optional[int] = 100,
          keep_checkpoints: int = 2, resume: Optional[bool] = None,
          callbacks: Sequence[Callable[[int], None]] = ()) -> TrainResult:
    """Train ``model`` on ``train_data`` with cross-entropy; evaluate after each epoch; save a checkpoint.

    Args:
        model: ``(N, T, C, H, W)`` clips -> ``(N, K)`` logits (e.g. a ``VideoClassifier``), trained in place.
        train_data, eval_data: datasets of ``(clip, label)`` (or ``DataLoader``s: their dataset, batch size
            and collate function are used; the batch order is the trainer's, see ``EpochBatches``).
        epochs, max_steps: stop after ``epochs`` passes or ``max_steps`` optimizer steps, first reached.
        batch_size: clips per process per step (the global batch is ``batch_size * processes``).
        lr, optimizer (``"adamw"``/``"sgd"``), weight_decay, momentum, schedule (``"cosine"``/
            ``"constant"``: transformers' schedule helpers with ``warmup_steps``), grad_clip (max grad
            norm; ``None`` disables).
        output_dir: where the final checkpoint goes (main process; see ``save_checkpoint``), with
            ``checkpoints/step-NNNNNNN/`` every ``save_every`` steps and on Ctrl-C / SIGTERM.
        resume: ``None`` continues from a compatible checkpoint in ``output_dir`` (refusing an
            incompatible one); ``True`` requires one; ``False`` starts over.
        metadata: extra JSON written into the checkpoint's ``video_classifier.json`` (e.g. class names).
        cpu, mixed_precision: passed to ``accelerate.Accelerator`` (or give ``accelerator``).
        callbacks: called with the number of completed steps after every step.

    Every step's batch, augmentation and dropout are seeded from ``(seed, step, process)``, so a run
    interrupted (Ctrl-C saves a checkpoint and raises ``slimkit.training.TrainingInterrupted``) or
    killed, then resumed, ends with the weights of an uninterrupted run (with ``num_workers=0``).
    """
    from slimkit.progress import bar as progress_bar
    from slimkit.training import TrainLoop, describe_model

    _check_train_options(optimizer, schedule, epochs, max_steps)
    dataset, batch_size, collate = _unpack_data(train_data, batch_size)
    if len(dataset) == 0:
        raise ConfigError("the training data is empty; pass a dataset with at least one clip")
    t0 = time.perf_counter()
    loop = TrainLoop(output_dir, save_every=save_every, keep=keep_checkpoints, resume=resume, seed=seed,
                     accelerator=accelerator or _make_accelerator(cpu, mixed_precision), callbacks=callbacks,
                     fingerprint={"trainer": "video", "model": describe_model(model), "data_size": len(dataset),
                                  "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size, "lr": lr,
                                  "optimizer": optimizer, "weight_decay": weight_decay, "momentum": momentum,
                                  "schedule": schedule, "warmup_steps": warmup_steps, "grad_clip": grad_clip,
                                  "seed": seed})
    accelerator = loop.accelerator
    batches = EpochBatches(len(dataset), batch_size, seed, accelerator.process_index, accelerator.num_processes)
    eval_loader = _eval_loader(eval_data, eval_batch_size or batch_size, num_workers)
    opt = _make_optimizer(model, optimizer, lr, weight_decay, momentum)
    model, opt, *rest = loop.prepare(model, opt, *([eval_loader] if eval_loader is not None else []))
    eval_loader = rest[0] if rest else None
    total = int(min(max_steps or math.inf, epochs * batches.per_epoch) if epochs >= 1 else max_steps)
    sched = _make_schedule(opt, schedule, warmup_steps, total)
    start, extra = loop.restore(model, opt, sched)
    run = _EpochLog(TrainResult(num_processes=accelerator.num_processes,
                                **{k: extra[k] for k in ("losses", "epoch_losses", "eval_accuracy") if k in extra}),
                    float(extra.get("epoch_sum", 0.0)), int(extra.get("epoch_n", 0)))
    bar = progress_bar(total=total, initial=start, desc="train",
                       enabled=progress and accelerator.is_local_main_process)
    model.train()
    with loop.signals():
        for step in range(start, total):
            _reseed_dataset(dataset, loop.seed_step(step))
            clips, labels = _fetch(dataset, batches.indices(step), collate, accelerator.device)
            loss = F.cross_entropy(_logits(model(clips)), labels)
            accelerator.backward(loss)
            if grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            run.add(float(accelerator.reduce(loss.detach(), reduction="mean")))
            bar.update(1)
            bar.set_postfix(epoch=step // batches.per_epoch + 1, loss=f"{run.result.losses[-1]:.4f}")
            if (step + 1) % batches.per_epoch == 0 or step + 1 == total:
                run.close_epoch(step // batches.per_epoch, model, eval_loader, accelerator, progress, bar)
            loop.end_step(step + 1, model, opt, sched, run.state, final=step + 1 == total)
    bar.close()
    result = run.result
    result.steps = total
    result.accuracy = result.eval_accuracy[-1] if result.eval_accuracy else None
    accelerator.wait_for_everyone()
    if output_dir is not None:
        if accelerator.is_main_process:
            save_checkpoint(accelerator.unwrap_model(model), output_dir,
                            {**(metadata or {}), "train": {k: v for k, v in result.to_dict().items()
                                                           if k not in ("losses", "output_dir")}})
        accelerator.wait_for_everyone()
        result.output_dir = str(output_dir)
    result.seconds = time.perf_counter() - t0
    return result


def _check_train_options(optimizer: str, schedule: str, epochs: int, max_steps: Optional[int]) -> None:
    if optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    if schedule not in ("cosine", "constant"):
        raise ConfigError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if epochs < 1 and not max_steps:
        raise ConfigError("give epochs >= 1 or max_steps >= 1")


def _eval_loader(eval_data, batch_size: int, num_workers: int):
    """``eval_data`` as a ``DataLoader`` (in order), or ``None``."""
    from torch.utils.data import DataLoader

    if eval_data is None or isinstance(eval_data, DataLoader):
        return eval_data
    return DataLoader(eval_data, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _make_optimizer(model: nn.Module, optimizer: str, lr: float, weight_decay: float, momentum: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _make_schedule(opt, schedule: str, warmup_steps: int, total: int):
    """transformers' cosine (over ``total`` steps) or constant schedule, both with linear warm-up."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    if schedule == "cosine":
        return get_cosine_schedule_with_warmup(opt, warmup_steps, total)
    return get_constant_schedule_with_warmup(opt, warmup_steps)


class _EpochLog:
    """Per-step losses, per-epoch mean losses and eval accuracies of a run (what a checkpoint keeps)."""

    def __init__(self, result: TrainResult, epoch_sum: float = 0.0, epoch_n: int = 0):
        self.result, self.epoch_sum, self.epoch_n = result, epoch_sum, epoch_n

    def add(self, loss: float) -> None:
        self.result.losses.append(loss)
        self.epoch_sum += loss
        self.epoch_n += 1

    def close_epoch(self, epoch: int, model, eval_loader, accelerator, progress: bool, bar) -> None:
        """Record the epoch's mean loss and, with eval data, its accuracy (the model goes back to train mode)."""
        r = self.result
        r.epoch_losses.append(self.epoch_sum / max(self.epoch_n, 1))
        self.epoch_sum, self.epoch_n = 0.0, 0
        if eval_loader is None:
            return
        acc = evaluate(model, eval_loader, accelerator, progress)
        model.train()
        r.eval_accuracy.append(acc)
        if accelerator.is_local_main_process and progress:
            bar.write(f"epoch {epoch + 1}: loss {r.epoch_losses[-1]:.4f}, eval accuracy {acc:.3f}")

    def state(self) -> dict:
        r = self.result
        return {"losses": r.losses, "epoch_losses": r.epoch_losses, "eval_accuracy": r.eval_accuracy,
                "epoch_sum": self.epoch_sum, "epoch_n": self.epoch_n}


# -- checkpoints ---------------------------------------------------------------------------
def save_checkpoint(model: nn.Module, directory, metadata: Optional[dict] = None) -> Path:
    """``slimkit.save_pretrained(model, directory)`` plus ``video_classifier.json``, written atomically
    (a ``checkpoints/`` sub-folder of training checkpoints already there is kept).

    For a ``VideoClassifier`` whose backbone is a Hugging Face model, the JSON holds the backbone's
    class and config, so ``load_checkpoint(directory)`` rebuilds everything without other files.
    """
    from slimkit.api import SAVE_FILES, _refuse_foreign_folder, write_pretrained
    from slimkit.io import atomic_folder, atomic_write_json
    from slimkit.training import CHECKPOINTS

    from .classifier import VideoClassifier

    info: dict = {"metadata": metadata or {}}
    if isinstance(model, VideoClassifier):
        head = model.head if isinstance(model.head, nn.Linear) else None
        info.update(n_segment=model.n_segment, num_classes=model.num_classes,
                    feature_dim=head.in_features if head is not None else None,
                    clip_input=model.clip_input,
                    dropout=model.dropout.p if isinstance(model.dropout, nn.Dropout) else 0.0)
        cfg = getattr(model.backbone, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            info["backbone_class"] = type(model.backbone).__name__
            info["backbone_config"] = cfg.to_dict()
    d = Path(directory)
    _refuse_foreign_folder(d, SAVE_FILES | {CLASSIFIER_FILE, CHECKPOINTS})
    with atomic_folder(d, keep=(CHECKPOINTS,)) as tmp:
        write_pretrained(model, tmp)
        atomic_write_json(tmp / CLASSIFIER_FILE, json.loads(json.dumps(info, default=str)))
    return d


def load_checkpoint(directory, backbone: Optional[nn.Module] = None) -> nn.Module:
    """Rebuild a ``VideoClassifier`` saved by ``train``/``save_checkpoint`` (techniques re-applied, weights loaded).

    Pass ``backbone`` (a fresh, untransformed one) when it is not a Hugging Face model.
    """
    import slimkit

    from .classifier import VideoClassifier

    d = Path(directory)
    info = checkpoint_info(d)
    if backbone is None:
        if "backbone_config" not in info:
            raise ConfigError(f"the checkpoint in {str(d)!r} does not describe its backbone; "
                              "pass backbone=<a fresh copy of the model you trained>")
        import transformers

        cfg_dict = dict(info["backbone_config"])
        cls = getattr(transformers, info["backbone_class"], None)
        if cls is None:
            raise ConfigError(f"transformers has no class {info['backbone_class']!r}; upgrade transformers")
        config = transformers.AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
        backbone = cls(config)
    clf = VideoClassifier(backbone, n_segment=info["n_segment"], num_classes=info.get("num_classes"),
                          feature_dim=info.get("feature_dim"), dropout=info.get("dropout", 0.0),
                          clip_input=info.get("clip_input", False))
    return slimkit.from_pretrained(clf, d)


def checkpoint_info(directory) -> dict:
    """The ``video_classifier.json`` of a checkpoint (classifier settings and metadata)."""
    from slimkit.io import read_json, recover_folder

    d = recover_folder(directory)
    path = d / CLASSIFIER_FILE
    if not path.exists():
        raise ConfigError(f"{str(d)!r} holds no {CLASSIFIER_FILE}; it was not written by slimkit_video.train "
                          f"(train one with `slimkit video train --output DIR`)")
    info = read_json(path, what="video checkpoint description", fix="train or save the checkpoint again")
    if not isinstance(info, dict):
        raise ConfigError(f"{str(path)!r} does not describe a video classifier; train or save the checkpoint again")
    return info


# -- command line ----------------------------------------------------------------------------
def _open_data(spec: str, split: str, args: dict):
    """A dataset from ``synthetic``, a folder-per-class root, or a saved HF ``datasets`` folder."""
    from .data import SyntheticTemporalDataset, VideoDataset

    common = dict(num_segments=args["n_segment"], size=args["size"], train=(split == "train"),
                  mean=args["mean"], std=args["std"])
    if spec == "synthetic":
        n = args["synthetic_clips"] if split == "train" else max(args["synthetic_clips"] // 4, 8)
        return SyntheticTemporalDataset(n_per_class=n, num_frames=args["n_segment"], size=args["size"],
                                        seed=args["seed"] + (0 if split == "train" else 10_000),
                                        mean=args["mean"], std=args["std"], cache=True)
    p = Path(spec)
    if (p / "state.json").exists() or (p / "dataset_dict.json").exists():
        import datasets

        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            names = ["train"] if split == "train" else ["validation", "test", "val"]
            found = [n for n in names if n in ds]
            if not found:
                if split == "train":
                    raise ConfigError(f"the dataset at {spec!r} has no 'train' split (splits: {list(ds)})")
                return None
            ds = ds[found[0]]
        return VideoDataset.from_hf(ds, video_column=args["video_column"], label_column=args["label_column"],
                                    skip_corrupt=args["skip_corrupt"], **common)
    return VideoDataset.from_folder(p, skip_corrupt=args["skip_corrupt"], **common)


def train_command():
    """The ``slimkit video train`` click command (the ``tsm`` part adds it to the ``video`` group it is given)."""
    import click

    @click.command("train")
    @click.option("--data", required=True,
                  help="'synthetic' (generated temporal-order clips), a folder with one sub-folder per "
                       "class, or a saved Hugging Face datasets folder of video paths and labels.")
    @click.option("--val-data", default=None, help="Evaluation data (same forms); 'synthetic' and HF "
                  "DatasetDicts provide their own.")
    @click.option("--backbone", default="tiny-resnet", show_default=True,
                  help="tiny-resnet, resnet18, resnet50, mobilenet_v2 or a local HF model folder.")
    @click.option("--tsm/--no-tsm", default=True, show_default=True, help="Insert temporal shifts (TSN without).")
    @click.option("--n-segment", default=8, show_default=True, help="Frames per clip.")
    @click.option("--shift-div", default=8, show_default=True)
    @click.option("--direction", type=click.Choice(["both", "past"]), default="both", show_default=True,
                  help="'past' trains a causal model for online inference.")
    @click.option("--place", type=click.Choice(["blockres", "block"]), default="blockres", show_default=True)
    @click.option("--temporal-pool", is_flag=True, help="Halve T after the first stage.")
    @click.option("--size", default=64, show_default=True, help="Frame size (pixels, square).")
    @click.option("--epochs", default=1, show_default=True)
    @click.option("--max-steps", default=None, type=int)
    @click.option("--batch-size", default=8, show_default=True, help="Clips per process per step.")
    @click.option("--lr", default=1e-3, show_default=True)
    @click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
    @click.option("--workers", default=0, show_default=True, help="DataLoader worker processes.")
    @click.option("--seed", default=0, show_default=True)
    @click.option("--synthetic-clips", default=200, show_default=True, help="Synthetic training clips per class.")
    @click.option("--video-column", default="video", show_default=True)
    @click.option("--label-column", default="label", show_default=True)
    @click.option("--skip-corrupt", is_flag=True, help="Skip unreadable videos with a warning.")
    @click.option("--output", default="runs/video", show_default=True, help="Checkpoint folder.")
    @click.option("--save-every", default=100, show_default=True,
                  help="Training checkpoint every N steps (0: only on Ctrl-C / SIGTERM).")
    @click.option("--resume/--no-resume", default=None,
                  help="Default: continue from the output folder's newest checkpoint when its settings match. "
                       "--resume requires one; --no-resume deletes the folder's checkpoints and starts over.")
    @click.option("--no-progress", is_flag=True)
    def train_command(**args):
        """Train a TSM (or TSN) video classifier; runs as is or under `accelerate launch`."""
        run_train_command(args, click.echo)

    return train_command


def run_train_command(args: dict, echo) -> None:
    """``slimkit video train``: build the data and the classifier from the options, train, report."""
    import slimkit

    from .classifier import VideoClassifier, build_backbone
    from .data import normalization_for

    backbone = build_backbone(args["backbone"])
    args["mean"], args["std"] = normalization_for(backbone)
    train_ds = _open_data(args["data"], "train", args)
    if args["val_data"]:
        val_ds = _open_data(args["val_data"], "val", args)
    elif args["data"] == "synthetic" or (Path(args["data"]) / "dataset_dict.json").exists():
        val_ds = _open_data(args["data"], "val", args)
    else:
        val_ds = None
    classes = list(getattr(train_ds, "classes", None) or [])
    num_classes = len(classes) if classes else 1 + max(label for _, label in train_ds.items)
    clf = VideoClassifier(backbone, n_segment=args["n_segment"], num_classes=num_classes)
    if args["tsm"]:
        clf = slimkit.apply(clf, "tsm", n_segment=args["n_segment"], shift_div=args["shift_div"],
                            direction=args["direction"], place=args["place"],
                            temporal_pool=args["temporal_pool"])
    from slimkit.training import TrainingInterrupted, interrupted_exit

    try:
        result = train(clf, train_ds, val_ds, epochs=args["epochs"], max_steps=args["max_steps"],
                       batch_size=args["batch_size"], lr=args["lr"], optimizer=args["optimizer"],
                       num_workers=args["workers"], seed=args["seed"], output_dir=args["output"],
                       metadata={"classes": classes, "size": args["size"], "mean": list(args["mean"]),
                                 "std": list(args["std"]), "data": args["data"]},
                       progress=not args["no_progress"], save_every=args["save_every"],
                       resume=args["resume"])
    except TrainingInterrupted as e:
        interrupted_exit(e, echo)
    from accelerate import PartialState

    if PartialState().is_main_process:
        acc = "n/a" if result.accuracy is None else f"{result.accuracy:.3f}"
        echo(f"trained {result.steps} steps in {result.seconds:.1f} s on {result.num_processes} "
             f"process(es): final loss {result.epoch_losses[-1]:.4f}, eval accuracy {acc}; "
             f"checkpoint in {args['output']}")


__all__ = ["train", "evaluate", "TrainResult", "save_checkpoint", "load_checkpoint", "checkpoint_info",
           "train_command"]
