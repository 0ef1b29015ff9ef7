"""The generated temporal-order dataset: same frames for both classes, only the order differs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from slimkit_video.data import (
    CLASSES,
    SyntheticTemporalDataset,
    VideoDataset,
    render_clip,
    synthetic_frames,
    write_synthetic_videos,
)


def _centroid_x(frame, bg):
    diff = np.abs(frame.astype(float) - bg.astype(float)).sum(-1) > 60
    return np.nonzero(diff)[1].mean()


def test_classes_are_time_reversals_with_identical_frames():
    a = render_clip(0, 8, 48, np.random.default_rng(7))
    b = render_clip(1, 8, 48, np.random.default_rng(7))
    assert a.shape == (8, 48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(b, a[::-1])                      # exact time reversal
    assert np.array_equal(np.sort(a.reshape(8, -1), 0), np.sort(b.reshape(8, -1), 0))
    assert not np.array_equal(a, b)
    # the shape moves: left to right for class 0
    med = np.median(a, axis=0)
    xs = [_centroid_x(f, med) for f in (a[0], a[-1])]
    assert xs[1] > xs[0] + 5


@pytest.mark.parametrize("t,size", [(2, 16), (5, (24, 40)), (16, 32)])
def test_any_clip_of_one_class_is_a_clip_of_the_other_reversed(t, size):
    for seed in range(4):
        a = render_clip(0, t, size, np.random.default_rng(seed))
        assert np.array_equal(render_clip(1, t, size, np.random.default_rng(seed)), a[::-1])
        assert a.shape[1:3] == ((size, size) if isinstance(size, int) else size)


def test_dataset_is_deterministic_and_normalised():
    ds = SyntheticTemporalDataset(n_per_class=3, num_frames=4, size=32, seed=3)
    x, y = ds[4]
    x2, y2 = ds[4]
    assert len(ds) == 6 and y == 0 and torch.equal(x, x2)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    assert CLASSES == ("left_to_right", "right_to_left")


def test_synthetic_frames_stream_exposes_the_label():
    it = synthetic_frames(size=32, seed=0, clip_len=5)
    labels, starts = [], []
    for _ in range(25):
        f = next(it)
        assert f.shape == (32, 32, 3) and f.dtype == np.uint8
        labels.append(it.label)
        starts.append(it.frame_in_clip == 0)
    assert sum(starts) == 5 and set(labels) <= {0, 1} and len(set(labels)) == 2
    assert all(len(set(labels[i:i + 5])) == 1 for i in range(0, 25, 5))


@pytest.mark.parametrize("size", [32, 48])  # decord 0.6 cannot output 48x48: the OpenCV fallback reads it
def test_written_mp4s_read_back_through_decord(tmp_path, size):
    items = write_synthetic_videos(tmp_path, n_per_class=2, num_frames=8, size=size, fps=8, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == list(CLASSES)
    ds = VideoDataset.from_folder(tmp_path, num_segments=8, size=size, train=False,
                                  mean=(0, 0, 0), std=(1, 1, 1))
    assert ds.classes == list(CLASSES) and len(ds) == 4
    for path, label in items:
        i = [p for p, _ in ds.items].index(path)
        clip, got = ds[i]
        assert got == label
        frames = (clip.permute(0, 2, 3, 1).numpy() * 255)
        want = render_clip(label, 8, size, np.random.default_rng([0, int(path.split("/")[-1][:4]) * 2 + label]))
        assert np.abs(frames - want.astype(np.float32)).mean() < 8  # mp4v is lossy, order preserved
