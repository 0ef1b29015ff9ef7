"""A generated temporal-order dataset: classes differ ONLY in the direction of motion.

Each clip shows one random shape (disc, square or triangle; random colours, size, position,
speed and a slight vertical drift) moving across a random darker textured background, plus
per-frame noise. (The shape is always brighter than the background: with random contrast
polarity, telling the direction from frame differences is an XOR of polarity and motion, which
small networks learn far more slowly.) Class ``"left_to_right"`` clips are rendered directly; a ``"right_to_left"`` clip is the
exact time reversal of a ``"left_to_right"`` clip drawn from the same distribution. So the
distribution of the *set* of frames of a clip is identical for both classes: any model that
looks at frames independently and averages (TSN) is at chance (50 %), while a model with
temporal order (TSM) can solve it.

- ``render_clip(label, num_frames, size, rng) -> uint8 (T, H, W, 3)``
- ``SyntheticTemporalDataset``: in-memory torch ``Dataset`` of ``((T, 3, H, W) float, label)``
- ``write_synthetic_videos(folder, n_per_class)``: real mp4 files (OpenCV ``mp4v``), one folder
  per class, readable by ``slimkit_video.data.VideoDataset.from_folder``
- ``synthetic_frames(size, seed)``: an endless frame stream whose ``.label`` is the current truth
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset

from slimkit.errors import ConfigError

from ..frames import frames_to_tensor

CLASSES = ("left_to_right", "right_to_left")
#: smallest frame side: below it the shape (radius 9-16 % of the side) is under a pixel and cannot move
MIN_SIZE = 16
SHAPES = ("disc", "square", "triangle")


def _size(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def check_clip_settings(size, num_frames: int) -> None:
    """Refuse frames too small to show the moving shape, and clips too short to have a direction."""
    h, w = _size(size)
    if min(h, w) < MIN_SIZE:
        raise ConfigError(f"size={size!r} is too small for the synthetic clips (the moving shape would be under a "
                          f"pixel); use frames of at least {MIN_SIZE}x{MIN_SIZE} pixels")
    if int(num_frames) < 2:
        raise ConfigError(f"{num_frames!r} frames per synthetic clip cannot show a direction of motion; "
                          f"use at least 2")


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random background: a base colour plus a low-frequency colour gradient/texture."""
    base = rng.uniform(15, 100, size=3)
    coarse = rng.normal(0, 15, size=(4, 4, 3))
    ys = np.linspace(0, 3, h)
    xs = np.linspace(0, 3, w)
    y0 = np.clip(ys.astype(int), 0, 2)
    x0 = np.clip(xs.astype(int), 0, 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    c = coarse
    tex = ((1 - fy) * (1 - fx) * c[y0][:, x0] + (1 - fy) * fx * c[y0][:, x0 + 1]
           + fy * (1 - fx) * c[y0 + 1][:, x0] + fy * fx * c[y0 + 1][:, x0 + 1])
    return base[None, None, :] + tex


def _mask(shape: str, cy: float, cx: float, r: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "disc":
        return dy * dy + dx * dx <= r * r
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    # upward triangle: inside three half-planes
    return (dy <= r * 0.7) & (dy >= -r + 1.7 * np.abs(dx))


def render_clip(label: int, num_frames: int = 8, size=64, rng: np.random.Generator | None = None) -> np.ndarray:
    """One clip of class ``label`` (index into ``CLASSES``) as uint8 ``(T, H, W, 3)`` RGB."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 ({CLASSES[0]}) or 1 ({CLASSES[1]}), got {label!r}")
    check_clip_settings(size, num_frames)
    rng = rng if rng is not None else np.random.default_rng()
    h, w = _size(size)
    t = int(num_frames)
    bg = _background(h, w, rng)
    r = rng.uniform(0.09, 0.16) * min(h, w)
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = rng.uniform(150, 255, size=3)  # brighter than the background in every channel
    span_x = w - 2 * r - 2
    speed = rng.uniform(0.03, 0.07) * w
    if t > 1:
        speed = min(speed, span_x / (t - 1))
    drift = rng.uniform(-0.3, 0.3) * speed
    x0 = rng.uniform(r + 1, r + 1 + max(span_x - speed * (t - 1), 0.0))
    span_y = h - 2 * r - 2 - abs(drift) * (t - 1)
    y0 = rng.uniform(r + 1, r + 1 + max(span_y, 0.0)) + (abs(drift) * (t - 1) if drift < 0 else 0.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((t, h, w, 3), np.float32)
    for i in range(t):
        m = _mask(shape, y0 + drift * i, x0 + speed * i, r, yy, xx)
        f = bg.copy()
        f[m] = colour
        frames[i] = f
    frames += rng.normal(0, 6.0, size=frames.shape)
    clip = np.clip(frames, 0, 255).astype(np.uint8)
    if label == 1:  # the exact time reversal of a left-to-right clip
        clip = clip[::-1].copy()
    return clip


class SyntheticTemporalDataset(Dataset):
    """``n_per_class`` clips per class, rendered on the fly (deterministic per ``seed`` and index).

    Item ``i``: ``(clip, label)`` with ``clip`` float32 ``(T, 3, H, W)`` normalised with
    ``mean``/``std`` (on 0..1 pixels) and ``label = i % 2``. Pass ``raw=True`` for uint8 ``(T, H, W, 3)``;
    ``cache=True`` keeps rendered clips (uint8) in memory for later epochs.
    """

    classes = CLASSES

    def __init__(self, n_per_class: int = 100, num_frames: int = 8, size=64, seed: int = 0,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                 raw: bool = False, cache: bool = False):
        check_clip_settings(size, num_frames)
        if int(n_per_class) < 1:
            raise ConfigError(f"n_per_class={n_per_class!r} must be at least 1 clip per class")
        self.n = int(n_per_class) * len(CLASSES)
        self.num_frames, self.size, self.seed = int(num_frames), size, int(seed)
        self.mean, self.std, self.raw = tuple(mean), tuple(std), raw
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return self.n

    def clip(self, index: int) -> tuple[np.ndarray, int]:
        label = index % len(CLASSES)
        if self._cache is not None and index in self._cache:
            return self._cache[index], label
        clip = render_clip(label, self.num_frames, self.size, np.random.default_rng([self.seed, index]))
        if self._cache is not None:
            self._cache[index] = clip
        return clip, label

    def __getitem__(self, index: int):
        if not 0 <= index < self.n:
            raise IndexError(index)
        clip, label = self.clip(index)
        return (clip if self.raw else frames_to_tensor(clip, self.mean, self.std)), label


def write_synthetic_videos(folder, n_per_class: int = 10, num_frames: int = 16, size=64,
                           fps: int = 8, seed: int = 0) -> list[tuple[str, int]]:
    """Write ``n_per_class`` mp4 clips per class under ``folder/<class>/NNNN.mp4``; return ``(path, label)``."""
    import cv2

    check_clip_settings(size, num_frames)
    folder = Path(folder)
    h, w = _size(size)
    items = []
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(n_per_class * len(CLASSES)):
        label = i % len(CLASSES)
        clip = render_clip(label, num_frames, (h, w), np.random.default_rng([seed, i]))
        path = folder / CLASSES[label] / f"{i // len(CLASSES):04d}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write {str(path)!r} with codec mp4v")
        for frame in clip:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # OpenCV wants BGR
        writer.release()
        items.append((str(path), label))
    return items


class SyntheticFrames:
    """Endless RGB uint8 ``(H, W, 3)`` frames of consecutive random clips.

    ``label`` / ``label_name`` give the true class of the clip the last returned frame belongs
    to; ``frame_in_clip`` its position (0 at a clip start). Clips are ``clip_len`` frames long.
    """

    def __init__(self, size=64, seed: int = 0, clip_len: int = 16):
        check_clip_settings(size, clip_len)
        self.size, self.clip_len = size, int(clip_len)
        self.rng = np.random.default_rng(seed)
        self.label = -1
        self.frame_in_clip = -1
        self._clip: np.ndarray | None = None

    @property
    def label_name(self) -> str:
        return CLASSES[self.label] if self.label >= 0 else ""

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self._clip is None or self.frame_in_clip + 1 >= self.clip_len:
            self.label = int(self.rng.integers(len(CLASSES)))
            self._clip = render_clip(self.label, self.clip_len, self.size, self.rng)
            self.frame_in_clip = -1
        self.frame_in_clip += 1
        return self._clip[self.frame_in_clip]


def synthetic_frames(size=64, seed: int = 0, clip_len: int = 16) -> SyntheticFrames:
    """An endless iterator of frames of consecutive generated clips; ``.label`` is the current truth."""
    return SyntheticFrames(size, seed, clip_len)
