"""Training and evaluation clips for the shipped online demo model.

``StreamWindows`` cuts ``T``-frame windows out of the same generated clips the ``synthetic``
source plays (``clip_len`` frames each, a shape moving left-to-right or right-to-left), at a
frame stride drawn from ``strides`` (stride 2 mimics a live loop that drops every other frame).
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


class StreamWindows(Dataset):
    """``T``-frame windows of ``clip_len``-frame generated clips, at frame stride 1 or 2.

    Item ``i`` is deterministic in ``(seed, i)``: ``((T, 3, H, W) float, label)``, label ``i % 2``.
    """

    def __init__(self, n_per_class: int, n_segment: int = 8, clip_len: int = 16, size: int = 64,
                 seed: int = 0, mean=(0.5,) * 3, std=(0.5,) * 3, strides=(1, 2)):
        from slimkit_video.data.synthetic import CLASSES

        self.classes = CLASSES
        self.n, self.t, self.clip_len, self.size, self.seed = 2 * n_per_class, n_segment, clip_len, size, seed
        self.strides = strides
        self.mean, self.std = tuple(mean), tuple(std)
        self._cache: dict = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        from slimkit_video.data.synthetic import render_clip
        from slimkit_video.frames import frames_to_tensor

        if i not in self._cache:  # uint8 windows (4x smaller than floats)
            rng = np.random.default_rng([self.seed, i])
            label = i % 2
            clip = render_clip(label, self.clip_len, self.size, rng)
            stride = int(self.strides[rng.integers(len(self.strides))])
            span = (self.t - 1) * stride + 1
            start = int(rng.integers(0, self.clip_len - span + 1))
            self._cache[i] = (np.ascontiguousarray(clip[start:start + span:stride]), label)
        window, label = self._cache[i]
        return frames_to_tensor(window, self.mean, self.std), label
