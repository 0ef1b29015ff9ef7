"""Video clip datasets read with decord, with TSN segment sampling.

``VideoDataset(items, num_segments=8, size=224, train=True, mean=..., std=...)`` where
``items`` is a list of ``(path, label)``. Item ``i`` is ``(clip, label)`` with ``clip`` float32
``(T, 3, H, W)``, ``T = num_segments``, normalised as ``(pixel/255 - mean) / std``
(:func:`slimkit_video.frames.frames_to_tensor`, as a stream's frames are).

TSN sampling: the video's frames are split into ``T`` equal segments; training takes one frame
at a random offset inside each segment, evaluation the centre frame of each segment (videos
shorter than ``T`` frames repeat frames). Frames are resized to ``size`` while decoding.

Constructors: ``VideoDataset.from_folder(root)`` (one sub-folder per class, sorted names are the
classes) and ``VideoDataset.from_hf(dataset, video_column="video", label_column="label")`` (a
Hugging Face ``datasets.Dataset`` of file paths and labels). Corrupt, empty, missing or
unreadable files raise ``slimkit.SourceError`` naming the file; with ``skip_corrupt=True`` they
are skipped with a warning instead (the next readable video is returned).
"""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from slimkit.errors import ConfigError, SourceError

from ..frames import IMAGENET_MEAN, IMAGENET_STD, frames_to_tensor, normalization_for

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
__all__ = ["VIDEO_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "normalization_for", "segment_indices",
           "VideoDataset"]


def segment_indices(num_frames: int, num_segments: int, train: bool,
                    rng: random.Random | None = None) -> list[int]:
    """TSN sampling: one index per segment, random offset (``train``) or the centre (eval)."""
    if num_frames <= 0:
        raise ValueError("a video with no frames has nothing to sample")
    seg = num_frames / num_segments
    out = []
    for k in range(num_segments):
        lo = seg * k
        if train:
            r = rng or random
            idx = int(lo + r.random() * seg)
        else:
            idx = int(lo + seg / 2)
        out.append(min(max(idx, 0), num_frames - 1))
    return out


def _size(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _read_cv2(path: str, indices: Sequence[int], h: int, w: int) -> np.ndarray:
    """Decode frames ``indices`` of ``path`` with OpenCV, resized to ``(h, w)``: uint8 ``(T, h, w, 3)`` RGB."""
    import cv2

    cap = cv2.VideoCapture(path)
    wanted = sorted(set(indices))
    got: dict[int, np.ndarray] = {}
    i = 0
    try:
        while wanted and i <= wanted[-1]:
            ok, frame = cap.read()
            if not ok:
                break
            if i in wanted:
                got[i] = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
            i += 1
    finally:
        cap.release()
    if not got:
        raise ValueError("OpenCV decoded no frames")
    last = got[max(got)]
    return np.stack([got.get(k, last) for k in indices])


class VideoDataset(Dataset):
    """Clips from video files via decord (see the module docstring).

    ``classes`` holds the class names when known (folder names or a ``ClassLabel`` column).
    """

    def __init__(self, items: Sequence[tuple[str, int]], num_segments: int = 8, size=224,
                 train: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, skip_corrupt: bool = False,
                 classes: Sequence[str] | None = None, seed: int | None = None):
        if num_segments < 1:
            raise ConfigError(f"num_segments must be >= 1, got {num_segments}")
        self.items = [(str(p), int(label)) for p, label in items]
        if not self.items:
            raise SourceError("the video dataset is empty; give at least one (path, label) item")
        self.num_segments, self.size, self.train = int(num_segments), _size(size), bool(train)
        if min(self.size) < 1:
            raise ConfigError(f"size={size!r} must be a positive frame size in pixels (an int or (height, width)), "
                              f"e.g. 224")
        self.mean, self.std = tuple(mean), tuple(std)
        self.skip_corrupt = skip_corrupt
        self.classes = list(classes) if classes is not None else None
        self.rng = random.Random(seed)
        self.bad: set[int] = set()
        for i, (path, _) in enumerate(self.items):  # cheap checks up front: missing or empty files
            problem = None
            if not os.path.isfile(path):
                problem = "the file does not exist"
            elif os.path.getsize(path) == 0:
                problem = "the file is empty (0 bytes)"
            if problem:
                self._bad(i, problem)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_folder(cls, root, **kwargs) -> "VideoDataset":
        """One sub-folder per class under ``root``; class index = position in the sorted names."""
        root = Path(root)
        if not root.is_dir():
            raise SourceError(f"video folder {str(root)!r} does not exist; give a folder with one sub-folder per class")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        items = [(str(f), label) for label, c in enumerate(classes) for f in sorted((root / c).iterdir())
                 if f.suffix.lower() in VIDEO_EXTENSIONS]
        if not items:
            raise SourceError(
                f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in the class sub-folders of {str(root)!r}; "
                "lay them out as ROOT/<class>/<video>")
        return cls(items, classes=classes, **kwargs)

    @classmethod
    def from_hf(cls, dataset, video_column: str = "video", label_column: str = "label",
                **kwargs) -> "VideoDataset":
        """A Hugging Face ``datasets.Dataset`` whose ``video_column`` holds file paths."""
        cols = list(getattr(dataset, "column_names", []) or [])
        for c in (video_column, label_column):
            if c not in cols:
                raise ConfigError(f"the dataset has no column {c!r} (columns: {cols}); "
                                  "pass video_column=/label_column=")
        paths = dataset[video_column]
        paths = [p if isinstance(p, str) else (p.get("path") if isinstance(p, dict) else str(p)) for p in paths]
        labels = dataset[label_column]
        feature = getattr(dataset, "features", {}).get(label_column)
        classes = kwargs.pop("classes", None) or getattr(feature, "names", None)
        return cls(list(zip(paths, labels)), classes=classes, **kwargs)

    # -- reading -----------------------------------------------------------------------
    def _bad(self, index: int, problem: str) -> None:
        path = self.items[index][0]
        msg = (f"cannot read video {path!r}: {problem}; re-encode or remove it, "
               "or pass skip_corrupt=True to skip unreadable files")
        if not self.skip_corrupt:
            raise SourceError(msg)
        if index not in self.bad:
            warnings.warn(f"skipping unreadable video {path!r}: {problem}", stacklevel=3)
        self.bad.add(index)

    def __len__(self) -> int:
        return len(self.items)

    def read(self, path: str) -> np.ndarray:
        """Decode the sampled frames of ``path``: uint8 ``(T, H, W, 3)`` (raises on bad files)."""
        import decord

        h, w = self.size
        vr = decord.VideoReader(path, width=w, height=h, num_threads=1)
        n = len(vr)
        if n == 0:
            raise ValueError("it has no video frames")
        idx = segment_indices(n, self.num_segments, self.train, self.rng)
        try:
            frames = vr.get_batch(idx).asnumpy()
        except Exception as e:
            # decord 0.6 fails on some output sizes (e.g. 48x48, 72x72: "DECORDArrayCopyFromTo:
            # The size must exactly match"); decode those with OpenCV instead
            if "DECORDArrayCopyFromTo" not in str(e):
                raise
            frames = _read_cv2(path, idx, h, w)
        if frames.shape != (self.num_segments, h, w, 3):
            # decord pads the rows of some narrow sizes and mislabels the channels (8x8 -> (8, 8, 12))
            frames = _read_cv2(path, idx, h, w)
        if frames.shape != (self.num_segments, h, w, 3):
            raise ValueError(f"decoded frames have shape {frames.shape}")
        return frames

    def __getitem__(self, index: int):
        for k in range(len(self.items)):
            i = (index + k) % len(self.items)
            if i in self.bad:
                continue
            path, label = self.items[i]
            try:
                frames = self.read(path)
            except Exception as e:  # decord raises bare RuntimeError/DECORDError
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                self._bad(i, f"decoding failed ({reason[:160]})")
                continue
            return frames_to_tensor(frames, self.mean, self.std), label
        raise SourceError("every video in the dataset is unreadable; check the files")

    def check(self) -> list[str]:
        """Try to open every video; return the unreadable paths (raises on the first unless skip_corrupt)."""
        import decord

        for i, (path, _) in enumerate(self.items):
            if i in self.bad:
                continue
            try:
                if len(decord.VideoReader(path, num_threads=1)) == 0:
                    raise ValueError("it has no video frames")
            except Exception as e:
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                self._bad(i, f"decoding failed ({reason[:160]})")
        return [self.items[i][0] for i in sorted(self.bad)]
