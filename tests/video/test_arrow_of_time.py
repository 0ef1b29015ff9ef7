"""tsm-arrow-of-time data: clip builder invariants, held-out ranges disjoint with a gap, reversed
clips, scene cuts, and that a frame-averaging model (TSN) cannot tell the direction."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from slimkit.errors import ConfigError
from slimkit_video.benchmarks.arrow_of_time import (
    ArrowClips,
    Clip,
    Footage,
    build_clips,
    clip_span,
    clip_starts,
    make_split,
    scene_cuts,
    split_time_ranges,
    stride_for,
)


def _footage(n: int = 120, size: int = 20, fps: float = 25.0, cut_at=None, seed: int = 0) -> Footage:
    """A video whose frame ``i`` holds the value ``i`` (mod 256) in channel 0, noise elsewhere."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    frames[..., 0] = (np.arange(n) % 256)[:, None, None]
    if cut_at is not None:
        frames[cut_at:, ..., 1:] = 250  # a different shot
    return Footage("fake.mp4", frames, fps)


def test_clip_span_stride_and_indices():
    assert clip_span(8, 3) == 22 and clip_span(8, 1) == 8
    assert stride_for(25.0, 0.12) == 3 and stride_for(10.0, 0.12) == 1 and stride_for(5.0, 0.01) == 1
    fwd, rev = build_clips(0, [5], stride=3, num_frames=8)
    assert fwd.label == 0 and rev.label == 1
    assert fwd.indices() == list(range(5, 27, 3)) and rev.indices() == fwd.indices()[::-1]


@pytest.mark.parametrize("n,fraction,gap", [(250, 0.25, 25), (68, 0.25, 15), (795, 0.3, 10), (30, 0.5, 40)])
def test_time_split_is_disjoint_with_a_gap(n, fraction, gap):
    (tr_lo, tr_hi), (te_lo, te_hi) = split_time_ranges(n, fraction, gap)
    assert 0 == tr_lo <= tr_hi and te_hi == n
    assert tr_hi == 0 or te_lo - tr_hi >= gap  # the gap between the last training frame and the first test one
    span = 8
    train = clip_starts((tr_lo, tr_hi), span)
    test = clip_starts((te_lo, te_hi), span)
    train_frames = {s + k for s in train for k in range(span)}
    test_frames = {s + k for s in test for k in range(span)}
    assert not train_frames & test_frames
    if train_frames and test_frames:
        assert min(test_frames) - max(train_frames) > gap


def test_clip_starts_stay_inside_the_range_and_skip_cuts():
    starts = clip_starts((10, 60), span=8, cuts=[30], every=1)
    assert starts and min(starts) >= 10 and max(starts) + 8 <= 60
    assert all(not (s < 30 < s + 8) for s in starts)  # no clip holds frames 29 and 30 together
    assert 22 in starts and 23 not in starts and 29 not in starts and 30 in starts
    assert clip_starts((0, 5), span=8) == []
    assert clip_starts((0, 40), span=8, every=4) == list(range(0, 33, 4))


def test_scene_cuts_finds_the_cut():
    assert scene_cuts(_footage(60, cut_at=37).frames) == [37]
    assert scene_cuts(_footage(60).frames) == []


def test_split_by_time_when_few_videos():
    videos = [_footage(120, seed=1), _footage(90, fps=10.0, cut_at=40, seed=2)]
    split = make_split(videos, num_frames=8, step_seconds=0.12, test_fraction=0.25, gap_seconds=1.0)
    assert split.by == "time"
    for v, info in enumerate(split.per_video):
        train = [c for c in split.train if c.video == v]
        test = [c for c in split.test if c.video == v]
        assert train and test
        last_train = max(max(c.indices()) for c in train)
        first_test = min(min(c.indices()) for c in test)
        assert first_test - last_train > info["gap_frames"]
        # every clip is there forward and reversed
        assert sorted(c.label for c in train).count(1) * 2 == len(train)
    assert split.per_video[1]["scene_cuts"] == 1
    assert not any(c.start < 40 < c.start + clip_span(8, c.stride) for c in split.train + split.test if c.video == 1)


def test_split_by_video_when_enough_videos():
    videos = [_footage(60, seed=i) for i in range(10)]
    split = make_split(videos, num_frames=8, step_seconds=0.12, test_fraction=0.2, gap_seconds=1.0)
    assert split.by == "video"
    train_videos, test_videos = {c.video for c in split.train}, {c.video for c in split.test}
    assert train_videos and test_videos and not train_videos & test_videos
    assert len(test_videos) == 2


def test_dataset_reverses_clips_and_keeps_the_direction_under_augmentation():
    video = _footage(60, size=20)
    clips = build_clips(0, [3], stride=2, num_frames=8)
    for train in (False, True):
        ds = ArrowClips([video], clips, crop=16, train=train, mean=(0, 0, 0), std=(1, 1, 1), seed=3)
        (fwd, y0), (rev, y1) = ds[0], ds[1]
        assert fwd.shape == (8, 3, 16, 16) and (y0, y1) == (0, 1)
        order_f = (fwd[:, 0].mean((1, 2)) * 255).round().long().tolist()
        order_r = (rev[:, 0].mean((1, 2)) * 255).round().long().tolist()
        assert order_f == list(range(3, 18, 2)) and order_r == order_f[::-1]
    with pytest.raises(ConfigError, match="no clips"):
        ArrowClips([video], [], crop=16, train=True)


def test_a_frame_averaging_model_cannot_tell_the_direction():
    from slimkit_video.classifier import VideoClassifier, tiny_resnet

    video = _footage(60, size=20)
    ds = ArrowClips([video], build_clips(0, [0, 10], stride=2, num_frames=8), crop=16, train=False)
    tsn = VideoClassifier(tiny_resnet(widths=(8, 8), depths=(1, 1)), n_segment=8, num_classes=2).eval()
    with torch.no_grad():
        logits = [tsn(ds[i][0][None])[0] for i in range(len(ds))]
    assert torch.allclose(logits[0], logits[1], atol=1e-5) and torch.allclose(logits[2], logits[3], atol=1e-5)


def test_clip_is_a_plain_record():
    c = Clip(video=1, start=0, stride=1, num_frames=3, label=1)
    assert c.indices() == [2, 1, 0]


def test_long_videos_are_capped_evenly():
    from slimkit_video.benchmarks.arrow_of_time import evenly

    assert evenly(range(10), None) == list(range(10)) and evenly(range(3), 5) == [0, 1, 2]
    assert evenly(range(100), 4) == [0, 25, 50, 75]
    videos = [_footage(400, seed=1), _footage(120, seed=2)]
    split = make_split(videos, num_frames=8, step_seconds=0.04, test_fraction=0.25, gap_seconds=0.5,
                       max_train_starts=50)
    assert sum(c.video == 0 for c in split.train) == 100 and sum(c.video == 1 for c in split.train) <= 100


def test_registered_and_the_plot_draws(tmp_path):
    import slimkit
    from slimkit_video.benchmarks.arrow_of_time import plot_arrow_of_time

    assert {"tsm-arrow-of-time", "online-ort"} <= set(slimkit.benchmarks())
    run = {"losses": [0.7, 0.69], "accuracy": 0.5, "per_video": {"a.mp4": 0.5}}
    result = {"runs": {"TSN": run, "TSM": dict(run, accuracy=0.9, per_video={"a.mp4": 0.9})},
              "data": {"videos": [{"name": "a.mp4", "test_clips": 4}, {"name": "b.avi", "test_clips": 0}],
                       "held_out_by": "time"}}
    plot_arrow_of_time(result, tmp_path / "aot.png")
    assert (tmp_path / "aot.png").stat().st_size > 1000


def test_motion_cue_sees_generated_motion_and_the_control_footage_is_one_way():
    from slimkit_video.benchmarks.arrow_of_time import motion_cue, synthetic_footage

    (video,) = synthetic_footage(n_videos=1, shots=3, size=40)
    assert video.frames.shape == (48, 40, 40, 3) and video.fps == 25.0
    cue = motion_cue(video.frames, 1)
    assert cue["steps"] == 47 and cue["direction_consistency"] >= 0.9 and cue["mean_flow_px"] > 0.3
    assert motion_cue(video.frames[:1], 1) == {"steps": 0, "mean_flow_px": 0.0, "direction_consistency": 0.5}
