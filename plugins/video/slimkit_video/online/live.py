"""The real-time streaming loop behind ``slimkit stream``.

- :class:`LatestFrameReader` reads a source in a background thread at the source's own pace
  (a camera delivers in real time; files and generated streams are paced to their ``fps``) and
  keeps only the newest frame: when inference is slower than the frame rate, the frames in
  between are dropped (counted), so the loop never falls behind the source.
- :func:`load_online_model` loads a checkpoint of ``slimkit video train`` (or the shipped demo
  model) and converts it with ``to_online``.
- :func:`run_stream` runs the loop: reset the buffers at a new file or a scene cut, one online
  step per frame, a smoothed prediction (mean of the softmax over the last ``history`` frames),
  a status line with per-frame latency and FPS, an optional window, and a summary.
"""
from __future__ import annotations

import collections
import os
import statistics
import signal
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

    def __post_init__(self) -> None:
        self._mean = np.asarray(self.mean, np.float32).reshape(1, 1, 3) * 255.0
        self._inv_std = 1.0 / (np.asarray(self.std, np.float32).reshape(1, 1, 3) * 255.0)

    def preprocess(self, frame: np.ndarray) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` -> normalised float ``(3, size, size)``."""
        if frame.shape[0] != self.size or frame.shape[1] != self.size:
            import cv2
            frame = cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)
        x = (frame.astype(np.float32) - self._mean) * self._inv_std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


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
        from slimkit_video.data import normalization_for
        mean, std = normalization_for(clf.backbone)
    return OnlineModel(stream, classes, int(meta.get("size", 224)), mean, std, name, len(stream.cells))


# -- scene cuts --------------------------------------------------------------------------------
class CutDetector:
    """A scene cut when the mean absolute difference of 16x16 grey thumbnails exceeds ``threshold``
    (0..255 scale). A cut means the video is no longer continuous: reset the stream. On the
    synthetic stream the difference stays below 7.5 inside a clip and is above 10 at 98 % of clip
    changes; raise the threshold for shaky or fast-panning cameras."""

    def __init__(self, threshold: float = 10.0) -> None:
        self.threshold = threshold
        self._prev: Optional[np.ndarray] = None

    def __call__(self, frame: np.ndarray) -> bool:
        import cv2
        thumb = cv2.resize(frame, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).mean(2)
        prev, self._prev = self._prev, thumb
        return prev is not None and float(np.abs(thumb - prev).mean()) > self.threshold


# -- per-frame prediction ----------------------------------------------------------------------
class LivePredictor:
    """One frame in, the smoothed prediction out: resets the stream at a new ``segment`` (a new
    file) or a scene cut, runs one online step and averages the softmax over ``history`` frames."""

    def __init__(self, model: OnlineModel, history: int = 8, reset_on_cut: bool = True,
                 cut_threshold: float = 10.0) -> None:
        self.model = model
        self.cuts = CutDetector(cut_threshold) if reset_on_cut else None
        self.history: collections.deque = collections.deque(maxlen=max(1, history))
        self.segment = None
        self.resets = 0

    def warm_up(self) -> None:
        """One step on a blank frame (first-call costs), then a clean reset."""
        blank = np.zeros((self.model.size, self.model.size, 3), np.uint8)
        self.model.stream.step(self.model.preprocess(blank))
        self.model.stream.reset()

    def reset(self) -> None:
        self.model.stream.reset()
        self.history.clear()

    def __call__(self, frame: np.ndarray, segment=0) -> tuple[int, float]:
        cut = self.cuts(frame) if self.cuts is not None else False
        if segment != self.segment or cut:
            if self.segment is not None:
                self.resets += 1
            self.reset()
            self.segment = segment
        logits = self.model.stream.step(self.model.preprocess(frame))
        self.history.append(torch.softmax(logits.float(), -1))
        smoothed = self.history[0] if len(self.history) == 1 else torch.stack(tuple(self.history)).mean(0)
        pred = int(smoothed.argmax())
        return pred, float(smoothed[pred])


# -- the loop ----------------------------------------------------------------------------------
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
    fps: float = 0.0
    accuracy: Optional[float] = None
    labelled_frames: int = 0
    interrupted: bool = False
    ended: str = ""
    predictions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"summary: {self.source} ({self.source_fps:g} fps) with {self.model}; "
               f"{self.seconds:.1f} s, stopped by {self.ended}",
               f"  frames: {self.frames_read} read, {self.frames_processed} processed, "
               f"{self.frames_dropped} dropped; {self.resets} buffer resets (new file or scene cut)",
               f"  latency per frame (preprocess + online step): p50 {self.latency_p50_ms:.2f} ms, "
               f"p95 {self.latency_p95_ms:.2f} ms; {self.fps:.1f} FPS processed"]
        if self.accuracy is not None:
            out.append(f"  smoothed prediction right on {100 * self.accuracy:.1f}% of "
                       f"{self.labelled_frames} frames (the source's true labels)")
        if self.predictions:
            out.append("  predictions: " + ", ".join(f"{k} {v}" for k, v in self.predictions.items()))
        return out


def display_available() -> bool:
    """Whether a window can be shown (a display and an OpenCV build with GUI support)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        import cv2
        info = cv2.getBuildInformation()
    except Exception:  # pragma: no cover
        return False
    gui = [ln for ln in info.splitlines() if ln.strip().startswith("GUI:")]
    return not gui or "NONE" not in gui[0].upper()


def run_stream(model: OnlineModel, source, *, seconds: Optional[float] = None, show: bool = False,
               history: int = 8, print_every: Optional[int] = None, reset_on_cut: bool = True,
               cut_threshold: float = 10.0, echo: Callable[[str], None] = print,
               tty: Optional[bool] = None, max_frames: Optional[int] = None) -> StreamSummary:
    """Run the real-time loop until ``seconds`` pass, the source ends or Ctrl-C; return the summary."""
    tty = sys.stdout.isatty() if tty is None else tty
    print_every = print_every or (1 if tty else 10)
    classes = model.classes
    summary = StreamSummary(source=source.name, model=model.name, source_fps=source.fps)
    window = None
    if show:
        if display_available():
            window = "slimkit stream"
        else:
            echo("note: --show needs a display and an OpenCV build with GUI support; running without a window")
    predictor = LivePredictor(model, history, reset_on_cut, cut_threshold)
    predictor.warm_up()
    latencies: list[float] = []
    stamps: collections.deque = collections.deque(maxlen=64)
    counts = collections.Counter()
    correct = labelled = 0
    reader = LatestFrameReader(source).start()
    t_start = time.perf_counter()
    last_seq = -1
    summary.ended = "the end of the source"
    # Ctrl-C must stop the loop even when the parent started us with SIGINT ignored (a background
    # job of a non-interactive shell, nohup, some test runners): handle it for the loop's duration
    previous_sigint = None
    if threading.current_thread() is threading.main_thread():
        previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            now = time.perf_counter()
            if seconds is not None and now - t_start >= seconds:
                summary.ended = f"--seconds {seconds:g}"
                break
            if max_frames is not None and summary.frames_processed >= max_frames:
                summary.ended = f"{max_frames} frames"
                break
            item = reader.next_after(last_seq, timeout=max(10.0, 5.0 / source.fps))
            if item is None:
                break
            seq, frame, label, seg = item
            summary.frames_dropped += seq - last_seq - 1
            last_seq = seq
            t0 = time.perf_counter()
            pred, conf = predictor(frame, seg)
            t1 = time.perf_counter()
            latencies.append((t1 - t0) * 1000.0)
            stamps.append(t1)
            summary.frames_processed += 1
            name = classes[pred] if pred < len(classes) else str(pred)
            counts[name] += 1
            if label is not None:
                labelled += 1
                correct += int(label == pred)
            fps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
            if summary.frames_processed % print_every == 0:
                truth = ""
                if label is not None and label < len(classes):
                    truth = f"  truth {classes[label]:<14}"
                line = (f"frame {seq:6d}  latency {latencies[-1]:6.2f} ms  {fps:5.1f} FPS  "
                        f"pred {name:<14} {conf:.2f}{truth}  dropped {summary.frames_dropped}")
                if tty:
                    sys.stdout.write("\r" + line)
                    sys.stdout.flush()
                else:
                    echo(line)
            if window is not None:
                if not _show(window, frame, f"{name} {conf:.2f}  {fps:.0f} FPS"):
                    summary.ended = "the window (q or Esc)"
                    break
    except KeyboardInterrupt:
        summary.interrupted = True
        summary.ended = "Ctrl-C"
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
        reader.stop()
        if window is not None:
            try:
                import cv2
                cv2.destroyAllWindows()
            except Exception:  # pragma: no cover
                pass
        if tty:
            sys.stdout.write("\n")
    summary.seconds = time.perf_counter() - t_start
    summary.resets = predictor.resets
    summary.frames_read = reader.frames_read
    if latencies:
        summary.latency_p50_ms = statistics.median(latencies)
        summary.latency_p95_ms = sorted(latencies)[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    summary.fps = summary.frames_processed / summary.seconds if summary.seconds > 0 else 0.0
    if labelled:
        summary.accuracy = correct / labelled
        summary.labelled_frames = labelled
    summary.predictions = dict(counts.most_common())
    return summary


def _show(window: str, frame: np.ndarray, text: str) -> bool:
    import cv2
    img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    scale = max(1, 320 // max(1, img.shape[1]))
    if scale > 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.imshow(window, img)
    key = cv2.waitKey(1) & 0xFF
    return key not in (ord("q"), 27)
