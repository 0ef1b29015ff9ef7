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
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

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
    from accelerate import Accelerator

    kwargs = {}
    if cpu is None and not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cpu = True  # several processes and no GPU: accelerate only uses gloo on CPU when asked
    if cpu:
        kwargs["cpu"] = True
    if mixed_precision and mixed_precision != "no":
        kwargs["mixed_precision"] = mixed_precision
    return Accelerator(**kwargs)


def evaluate(model: nn.Module, loader, accelerator=None, progress: bool = False) -> float:
    """Top-1 accuracy (0..1) of ``model`` over ``loader`` (gathered over processes when prepared)."""
    from tqdm.auto import tqdm

    model.eval()
    correct = total = 0
    main = accelerator is None or accelerator.is_local_main_process
    with torch.no_grad():
        for clips, labels in tqdm(loader, desc="eval", disable=not (progress and main), leave=False):
            pred = _logits(model(clips)).argmax(-1)
            if accelerator is not None:
                pred, labels = accelerator.gather_for_metrics((pred, labels))
            correct += int((pred == labels).sum())
            total += int(labels.numel())
    return correct / max(total, 1)


def train(model: nn.Module, train_data, eval_data=None, *, epochs: int = 1, max_steps: Optional[int] = None,
          batch_size: int = 8, eval_batch_size: Optional[int] = None, lr: float = 1e-3,
          optimizer: str = "adamw", weight_decay: float = 1e-4, momentum: float = 0.9,
          schedule: str = "cosine", warmup_steps: int = 0, grad_clip: Optional[float] = 20.0,
          num_workers: int = 0, seed: int = 0, output_dir: Optional[str] = None,
          metadata: Optional[dict] = None, progress: bool = True, cpu: Optional[bool] = None,
          mixed_precision: Optional[str] = None, accelerator=None) -> TrainResult:
    """Train ``model`` on ``train_data`` with cross-entropy; evaluate after each epoch; save a checkpoint.

    Args:
        model: ``(N, T, C, H, W)`` clips -> ``(N, K)`` logits (e.g. a ``VideoClassifier``), trained in place.
        train_data, eval_data: datasets of ``(clip, label)`` (or ready ``DataLoader``s).
        epochs, max_steps: stop after ``epochs`` passes or ``max_steps`` optimizer steps, first reached.
        batch_size: clips per process per step (the global batch is ``batch_size * processes``).
        lr, optimizer (``"adamw"``/``"sgd"``), weight_decay, momentum, schedule (``"cosine"``/
            ``"constant"``), warmup_steps, grad_clip (max grad norm; ``None`` disables).
        output_dir: where to write the checkpoint (main process) - see ``save_checkpoint``.
        metadata: extra JSON written into the checkpoint's ``video_classifier.json`` (e.g. class names).
        cpu, mixed_precision: passed to ``accelerate.Accelerator`` (or give ``accelerator``).
    """
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    if schedule not in ("cosine", "constant"):
        raise ConfigError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if epochs < 1 and not max_steps:
        raise ConfigError("give epochs >= 1 or max_steps >= 1")
    accelerator = accelerator or _make_accelerator(cpu, mixed_precision)
    set_seed(seed)
    t0 = time.perf_counter()

    def loader(data, shuffle, bs):
        if data is None or isinstance(data, DataLoader):
            return data
        return DataLoader(data, batch_size=bs, shuffle=shuffle, num_workers=num_workers,
                          drop_last=shuffle and len(data) >= bs)

    train_loader = loader(train_data, True, batch_size)
    eval_loader = loader(eval_data, False, eval_batch_size or batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    if eval_loader is not None:
        model, opt, train_loader, eval_loader = accelerator.prepare(model, opt, train_loader, eval_loader)
    else:
        model, opt, train_loader = accelerator.prepare(model, opt, train_loader)
    steps_per_epoch = max(len(train_loader), 1)
    total = min(max_steps or math.inf, epochs * steps_per_epoch) if epochs >= 1 else max_steps
    total = int(total)
    epochs_needed = math.ceil(total / steps_per_epoch)

    def lr_factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        prog = (step - warmup_steps) / max(total - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    result = TrainResult(num_processes=accelerator.num_processes)
    step = 0
    bar = tqdm(total=total, desc="train", disable=not (progress and accelerator.is_local_main_process),
               dynamic_ncols=True)
    for epoch in range(epochs_needed):
        model.train()
        epoch_sum = epoch_n = 0.0
        for clips, labels in train_loader:
            loss = F.cross_entropy(_logits(model(clips)), labels)
            accelerator.backward(loss)
            if grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            mean_loss = float(accelerator.reduce(loss.detach(), reduction="mean"))
            result.losses.append(mean_loss)
            epoch_sum += mean_loss
            epoch_n += 1
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss:.4f}")
            if step >= total:
                break
        result.epoch_losses.append(epoch_sum / max(epoch_n, 1))
        if eval_loader is not None:
            acc = evaluate(model, eval_loader, accelerator, progress)
            result.eval_accuracy.append(acc)
            if accelerator.is_local_main_process and progress:
                bar.write(f"epoch {epoch + 1}: loss {result.epoch_losses[-1]:.4f}, eval accuracy {acc:.3f}")
        if step >= total:
            break
    bar.close()
    result.steps = step
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


# -- checkpoints ---------------------------------------------------------------------------
def save_checkpoint(model: nn.Module, directory, metadata: Optional[dict] = None) -> Path:
    """``slimkit.save_pretrained(model, directory)`` plus ``video_classifier.json``.

    For a ``VideoClassifier`` whose backbone is a Hugging Face model, the JSON holds the backbone's
    class and config, so ``load_checkpoint(directory)`` rebuilds everything without other files.
    """
    import slimkit

    from .classifier import VideoClassifier

    d = slimkit.save_pretrained(model, directory)
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
    (Path(d) / CLASSIFIER_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return Path(d)


def load_checkpoint(directory, backbone: Optional[nn.Module] = None) -> nn.Module:
    """Rebuild a ``VideoClassifier`` saved by ``train``/``save_checkpoint`` (techniques re-applied, weights loaded).

    Pass ``backbone`` (a fresh, untransformed one) when it is not a Hugging Face model.
    """
    import slimkit

    from .classifier import VideoClassifier

    d = Path(directory)
    path = d / CLASSIFIER_FILE
    if not path.exists():
        raise ConfigError(f"{str(d)!r} holds no {CLASSIFIER_FILE}; it was not written by slimkit_video.train")
    info = json.loads(path.read_text())
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
    return json.loads((Path(directory) / CLASSIFIER_FILE).read_text())


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


def register_cli() -> None:
    """Add ``train`` to the ``slimkit video`` group."""
    import click

    from .cli import video

    if "train" in video.commands:
        return

    @video.command("train")
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
    @click.option("--no-progress", is_flag=True)
    def train_command(**args):
        """Train a TSM (or TSN) video classifier; runs as is or under `accelerate launch`."""
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
        result = train(clf, train_ds, val_ds, epochs=args["epochs"], max_steps=args["max_steps"],
                       batch_size=args["batch_size"], lr=args["lr"], optimizer=args["optimizer"],
                       num_workers=args["workers"], seed=args["seed"], output_dir=args["output"],
                       metadata={"classes": classes, "size": args["size"], "mean": list(args["mean"]),
                                 "std": list(args["std"]), "data": args["data"]},
                       progress=not args["no_progress"])
        from accelerate import PartialState

        if PartialState().is_main_process:
            acc = "n/a" if result.accuracy is None else f"{result.accuracy:.3f}"
            click.echo(f"trained {result.steps} steps in {result.seconds:.1f} s on {result.num_processes} "
                       f"process(es): final loss {result.epoch_losses[-1]:.4f}, eval accuracy {acc}; "
                       f"checkpoint in {args['output']}")


__all__ = ["train", "evaluate", "TrainResult", "save_checkpoint", "load_checkpoint", "checkpoint_info",
           "register_cli"]
