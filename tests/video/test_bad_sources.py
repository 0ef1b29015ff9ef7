"""Bad sources and awkward videos: malformed specs are one sentence listing the valid form; tiny,
grey, one-frame and odd-width videos play correctly (decord pads their rows and reports 4, 6, 12
or 16 "channels"); `slimkit stream` never ends in a traceback."""
from __future__ import annotations

import numpy as np
import pytest

import slimkit
from slimkit.cli import main
from slimkit.errors import ConfigError, SourceError


def _write_mp4(path, width, height, frames, grey=False):
    """A small H.264 mp4 written with PyAV (random RGB frames, or grey ramps)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, ("gray" if grey else "yuv420p")
        rng = np.random.default_rng(0)
        for i in range(frames):
            if grey:
                img = (np.arange(width)[None, :] * 7 + i * 30 + np.arange(height)[:, None] * 3) % 256
                frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="gray")
            else:
                frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (height, width, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def _pyav_frames(path, width=None, height=None):
    import av

    with av.open(path) as c:
        return [f.reformat(width=width or f.width, height=height or f.height, format="rgb24").to_ndarray()
                for f in c.decode(video=0)]


@pytest.mark.parametrize("spec,form", [
    ("synthetic:0", "synthetic:SIZE"), ("synthetic:-5", "synthetic:SIZE"), ("synthetic:abc", "synthetic:SIZE"),
    ("synthetic:8", ">= 16"), ("webcam:x", "webcam:N"), ("webcam:-1", "webcam:N"),
    ("lavfi:", "lavfi:GRAPH"), ("file:", "file:PATH"),
])
def test_malformed_specs_are_one_sentence_with_the_valid_form(spec, form):
    with pytest.raises(SourceError) as e:
        slimkit.open_source(spec)
    msg = str(e.value)
    assert f"malformed source {spec!r}" in msg and form in msg and "\n" not in msg
    assert "synthetic" in msg and "webcam" in msg  # the other sources are listed too


@pytest.mark.parametrize("width,height,frames,grey", [
    (8, 8, 3, False),     # decord: (8, 8, 12)
    (16, 16, 3, True),    # grey, decord: (16, 16, 6)
    (24, 24, 1, False),   # one frame, decord: (24, 24, 4)
    (6, 10, 2, False),    # odd shape, decord: (10, 6, 16)
])
def test_tiny_grey_and_one_frame_videos_play_exactly(tmp_path, width, height, frames, grey):
    path = _write_mp4(tmp_path / "v.mp4", width, height, frames, grey)
    with slimkit.open_source(path) as src:
        got = list(src)
    want = _pyav_frames(path)
    assert len(got) == frames == len(want)
    for a, b in zip(got, want):
        assert a.shape == (height, width, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b)
    if grey:
        assert np.array_equal(got[0][..., 0], got[0][..., 2])


@pytest.mark.parametrize("size", [8, 48])  # decord pads the rows of these output sizes
def test_resizing_a_real_video_to_awkward_sizes(video_dir, size):
    path = str(video_dir / "bikes.mp4")
    with slimkit.open_source(path, width=size, height=size) as src:
        frame = next(src)
    assert frame.shape == (size, size, 3)
    assert np.abs(frame.astype(float) - _pyav_frames(path, size, size)[0]).mean() < 2.0


def test_pyav_reads_what_decord_cannot(tmp_path, monkeypatch):
    from slimkit_video.sources import openers

    class BrokenDecord:
        def __init__(self, *args):
            raise RuntimeError("[12:00:00] src/video_reader.cc:151: Check failed\nStack trace:\n  [bt] (0) ...")

    monkeypatch.setattr(openers, "DECODERS", (BrokenDecord, openers._PyAVFrames))
    path = _write_mp4(tmp_path / "v.mp4", 32, 16, 4)
    with slimkit.open_source(path, width=20, height=10) as src:
        got = list(src)
    assert [f.shape for f in got] == [(10, 20, 3)] * 4
    assert all(np.array_equal(a, b) for a, b in zip(got, _pyav_frames(path, 20, 10)))
    # neither decoder: one line, decord's C++ stack cut off
    monkeypatch.setattr(openers, "DECODERS", (BrokenDecord,))
    with pytest.raises(SourceError, match="cannot read video file") as e:
        slimkit.open_source(path)
    assert "\n" not in str(e.value) and "Stack trace" not in str(e.value)


def test_frames_of_any_source_are_rgb_or_refused():
    from slimkit_video.sources.base import FrameSource

    class Frames(FrameSource):
        def __init__(self, frames):
            super().__init__("custom", 25)
            self._it = iter(frames)

        def _next(self):
            return next(self._it)

    grey, rgba = np.full((4, 5), 7, np.uint8), np.zeros((4, 5, 4), np.uint8)
    assert [f.shape for f in Frames([grey, grey[..., None], rgba])] == [(4, 5, 3)] * 3
    for bad in (np.zeros((4, 5, 2), np.uint8), np.zeros((0, 5, 3), np.uint8), np.zeros((4, 5, 3), np.float32)):
        with pytest.raises(SourceError, match="'custom' delivered"):
            next(Frames([bad]))


def test_bad_source_options_are_refused():
    with pytest.raises(ConfigError, match="unknown option 'colour' for source 'synthetic'; valid options are .*'seed'"):
        slimkit.open_source("synthetic", colour="red")
    with pytest.raises(ConfigError, match="clip_len=1 .* at least 2"):
        slimkit.open_source("synthetic", clip_len=1)
    with pytest.raises(ConfigError, match="fps=0"):
        slimkit.open_source("synthetic", fps=0)
    with pytest.raises(ConfigError, match="width=0"):
        slimkit.open_source("missing.mp4", width=0, height=32)


def test_stream_plays_a_tiny_video_end_to_end(tmp_path, capsys):
    path = _write_mp4(tmp_path / "tiny.mp4", 8, 8, 4)
    rc = main(["stream", "--source", path, "--seconds", "5", "--print-every", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "stopped by the end of the source" in out and "4 processed" in out and "Traceback" not in out + err


@pytest.mark.parametrize("args,expected", [
    (["--source", "synthetic:0"], "malformed source 'synthetic:0'"),
    (["--source", "webcam:x"], "malformed source 'webcam:x'"),
    (["--source", "synthetic", "--seconds", "0"], "Invalid value for '--seconds'"),
    (["--source", "synthetic", "--history", "0"], "Invalid value for '--history'"),
])
def test_stream_refuses_bad_input_in_one_line(capsys, args, expected):
    rc = main(["stream", *args, *([] if "--seconds" in args else ["--seconds", "1"])])
    out, err = capsys.readouterr()
    assert rc == 2 and expected in err and "Traceback" not in out + err
    assert len([ln for ln in err.splitlines() if ln.startswith("Error")]) == 1
