"""Frame sources on real data: a real mp4 (decord), a folder, a lavfi stream (PyAV), the synthetic stream."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import slimkit
from slimkit.errors import SourceError


def _frames(src, n):
    out = []
    for f in src:
        out.append(f)
        if len(out) == n:
            break
    return out


def test_sources_are_registered():
    assert {"webcam", "file", "synthetic", "lavfi"} <= set(slimkit.sources())


def test_real_mp4_file_matches_decord(video_dir):
    import decord

    path = video_dir / "bikes.mp4"
    with slimkit.open_source(str(path)) as src:      # bare path -> file source
        frames = _frames(src, 6)
        assert src.fps == pytest.approx(decord.VideoReader(str(path)).get_avg_fps())
        assert not src.live and src.label is None
    ref = decord.VideoReader(str(path)).get_batch(list(range(6))).asnumpy()
    assert len(frames) == 6 and frames[0].dtype == np.uint8 and frames[0].shape == ref.shape[1:]
    assert all(np.array_equal(a, b) for a, b in zip(frames, ref))
    with slimkit.open_source(f"file:{path}") as src:  # explicit scheme
        assert np.array_equal(next(src), ref[0])


def test_folder_plays_files_in_order_and_counts_segments(video_dir, tmp_path):
    import decord

    for name in ("carphone_pristine.mp4", "carphone_distorted.mp4"):
        shutil.copy(video_dir / name, tmp_path / name)
    n0 = len(decord.VideoReader(str(tmp_path / "carphone_distorted.mp4")))
    src = slimkit.open_source(str(tmp_path), width=32, height=24)
    segments = []
    count = 0
    for f in src:
        assert f.shape == (24, 32, 3)
        segments.append(src.segment)
        count += 1
        if src.segment == 1:
            break
    assert count == n0 + 1 and segments[0] == 0 and segments[-1] == 1  # distorted first (sorted), then pristine


def test_lavfi_stream():
    with slimkit.open_source("lavfi:testsrc2=size=48x32:rate=10:d=2") as src:
        frames = list(src)
        assert src.fps == 10
    assert len(frames) == 20 and frames[0].shape == (32, 48, 3) and frames[0].dtype == np.uint8
    assert not np.array_equal(frames[0], frames[5])  # the test pattern moves


def test_synthetic_stream_is_endless_and_labelled():
    with slimkit.open_source("synthetic:48", seed=1, clip_len=4) as src:
        labels = []
        frames = []
        for _ in range(40):
            frames.append(next(src))
            labels.append(src.label)
    assert len(frames) == 40 and frames[0].shape == (48, 48, 3)
    assert set(labels) <= {0, 1} and len(set(labels)) == 2
    assert src.classes == ("left_to_right", "right_to_left")


@pytest.mark.parametrize("spec,match", [
    ("nosuch-source", "unknown source"),
    ("missing_video.mp4", "does not exist"),
    ("lavfi:nosuchfilter=size=8x8", "lavfi"),
    ("webcam:7", "camera"),
])
def test_bad_sources_give_clear_errors_listing_sources(spec, match):
    with pytest.raises(SourceError, match=match) as e:
        slimkit.open_source(spec)
    assert "synthetic" in str(e.value) and "webcam" in str(e.value)


def test_unreadable_and_empty_inputs(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    with pytest.raises(SourceError, match="broken.mp4"):
        slimkit.open_source(str(bad))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no video files"):
        slimkit.open_source(str(tmp_path / "empty"))
