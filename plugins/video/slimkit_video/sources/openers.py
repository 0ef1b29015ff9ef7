"""The built-in frame sources: ``webcam:N``, video files/folders, ``synthetic``, ``lavfi:SPEC``.

Open them with ``slimkit.open_source(spec)``; each returns a :class:`FrameSource` (see
``base.py``) of RGB ``uint8`` ``(H, W, 3)`` frames. Problems (no camera, a missing or unreadable
file, a bad filter graph) raise ``slimkit.SourceError`` naming the problem and listing the
sources; nothing waits forever (camera opening and first read have a timeout).
"""
from __future__ import annotations

import glob
import inspect
import os
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from slimkit.errors import ConfigError, one_of

from .base import FrameSource, source_error

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


def _construct(cls, spec: str, options: dict):
    """``cls(spec, **options)``, refusing option names the source does not have (listing the valid ones)."""
    valid = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "spec")]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for source {spec!r}; valid options are {one_of(valid)}")
    return cls(spec, **options)


def _call_with_timeout(fn, timeout: float, what: str):
    """Run ``fn()`` in a daemon thread; raise SourceError if it takes longer than ``timeout``."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True, name=f"slimkit-{what}")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise source_error(f"{what} did not answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- webcam ------------------------------------------------------------------------------------
def camera_devices() -> list[str]:
    """Video capture devices visible on this machine (Linux ``/dev/video*``; empty elsewhere)."""
    return sorted(glob.glob("/dev/video*"))


def has_camera() -> bool:
    """Best guess, without opening anything, whether a camera exists (Linux: a /dev/video* node)."""
    if os.name == "posix" and Path("/dev").is_dir() and not Path("/System").exists():  # Linux-like
        return bool(camera_devices())
    return True  # macOS/Windows: cannot tell without opening; the opener times out cleanly


WEBCAM_FORMS = "webcam, webcam:N (a camera index, N >= 0) or webcam:/dev/videoN"


def webcam_device(spec: str):
    """The OpenCV device of a ``webcam`` spec: an index (default 0) or a device path."""
    _, _, rest = spec.partition(":")
    rest = rest.strip()
    if not rest:
        return 0
    if rest.isdigit():
        return int(rest)
    if rest.startswith("/"):
        return rest
    raise source_error(f"malformed source {spec!r}: use {WEBCAM_FORMS}")


class WebcamSource(FrameSource):
    """Frames from an OpenCV camera (``webcam:N`` = device index ``N``, or ``webcam:/dev/videoN``)."""

    live = True

    def __init__(self, spec: str, timeout: float = 5.0, width: Optional[int] = None,
                 height: Optional[int] = None) -> None:
        import cv2

        device = webcam_device(spec)
        if os.name == "posix" and isinstance(device, int) and not Path("/System").exists() \
                and not Path(f"/dev/video{device}").exists():
            found = ", ".join(camera_devices()) or "none"
            raise source_error(f"no camera at {spec!r} (/dev/video{device} does not exist; cameras found: {found})")
        try:
            cv2.setLogLevel(0)  # OpenCV's own warnings would duplicate our error
        except Exception:  # pragma: no cover - older OpenCV
            pass
        cap = _call_with_timeout(lambda: cv2.VideoCapture(device), timeout, f"camera {spec!r}")
        if cap is None or not cap.isOpened():
            raise source_error(f"cannot open camera {spec!r} (missing, busy or not permitted)")
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        try:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of stale ones
        except Exception:  # pragma: no cover
            pass
        self._cap, self._cv2, self.timeout = cap, cv2, timeout
        ok, frame = _call_with_timeout(cap.read, timeout, f"camera {spec!r}")
        if not ok or frame is None:
            cap.release()
            raise source_error(f"camera {spec!r} opened but gave no frame within {timeout:g} s")
        self._first = frame
        super().__init__(spec, cap.get(cv2.CAP_PROP_FPS) or 30.0)

    def _next(self) -> np.ndarray:
        if self._first is not None:
            frame, self._first = self._first, None
        else:
            ok, frame = self._cap.read()
            if not ok or frame is None:
                raise StopIteration
        return self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        super().close()
        self._cap.release()


def open_webcam(spec: str, **options) -> WebcamSource:
    return _construct(WebcamSource, spec, options)


# -- files and folders (decord, PyAV as the fallback) -------------------------------------------
def _video_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def _first_line(error: BaseException) -> str:
    """The first line of an error message (decord's carry a whole C++ stack), at most 120 characters."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:120]


def unpad_rgb(frame: np.ndarray) -> np.ndarray:
    """Repair a decord frame whose rows were padded: ``(H, W, C)`` with ``C != 3`` -> ``(H, W, 3)``.

    decord 0.6 pads the RGB rows of some narrow videos (widths 2-24, 48, ...) to a multiple of 32
    pixels and then labels the buffer ``(H, W, 3 * stride / W)``: an 8x8 video comes back as
    ``(8, 8, 12)``, a 16x16 one as ``(16, 16, 6)``. The bytes are the padded RGB rows, so reading
    them as ``(H, stride, 3)`` and dropping the padding gives the exact frame. Raises ``ValueError``
    for a layout that is not such a padding.
    """
    h, w, c = frame.shape
    if c == 3:
        return frame
    if (w * c) % 3 != 0 or w * c // 3 < w:
        raise ValueError(f"decoded frame has shape {frame.shape}, not (H, W, 3)")
    return np.ascontiguousarray(frame.reshape(h, w * c // 3, 3)[:, :w])


class _DecordFrames:
    """The RGB frames of one video file through decord (fast; tried first)."""

    def __init__(self, path: str, width: int, height: int) -> None:
        import decord

        self._reader = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height)
        self.count = len(self._reader)
        self.fps = self._reader.get_avg_fps() or 25.0
        self._pos = 0

    def read(self) -> np.ndarray:
        """The next frame ``(H, W, 3)``; ``StopIteration`` at the end."""
        if self._pos >= self.count:
            raise StopIteration
        frame = self._reader.next().asnumpy()
        self._pos += 1
        return unpad_rgb(frame)

    def close(self) -> None:
        self._reader = None


class _PyAVFrames:
    """The RGB frames of one video file through PyAV (for files and sizes decord cannot decode)."""

    def __init__(self, path: str, width: int, height: int) -> None:
        import av

        self._container = av.open(path)
        if not self._container.streams.video:
            self._container.close()
            raise ValueError("it has no video stream")
        stream = self._container.streams.video[0]
        self.fps = float(stream.average_rate or stream.guessed_rate or 25)
        self._size = (width, height)
        self._frames = self._container.decode(video=0)

    def read(self) -> np.ndarray:
        """The next frame ``(H, W, 3)``, resized like decord (``-1`` keeps that side); ``StopIteration`` at the end."""
        frame = next(self._frames)
        w, h = self._size
        rgb = frame.reformat(width=w if w > 0 else frame.width, height=h if h > 0 else frame.height,
                             format="rgb24")
        return rgb.to_ndarray()

    def close(self) -> None:
        try:
            self._container.close()
        except Exception:  # pragma: no cover
            pass


DECODERS = (_DecordFrames, _PyAVFrames)


def open_video_frames(path: str, width: int = -1, height: int = -1):
    """``(decoder, first frame)`` for ``path``: decord, or PyAV where decord fails on this file or size.

    Raises ``SourceError`` when no decoder reads a frame (unreadable, empty or not a video).
    """
    problems = []
    for decoder in DECODERS:
        reader = None
        try:
            reader = decoder(path, width, height)
            return reader, reader.read()
        except StopIteration:
            problems.append("it has no frames")
        except Exception as e:  # noqa: BLE001 - decord raises RuntimeError / DECORDError, PyAV FFmpegError
            problems.append(_first_line(e))
        if reader is not None:
            reader.close()
    if all(p == "it has no frames" for p in problems):
        raise source_error(f"video file {path!r} has no frames")
    reason = next(p for p in problems if p != "it has no frames")
    raise source_error(f"cannot read video file {path!r} ({reason})")


def _check_size(width: int, height: int) -> None:
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool) or (v < 1 and v != -1):
            raise ConfigError(f"{name}={v!r} must be a positive number of pixels, or -1 to keep the video's")


class FileSource(FrameSource):
    """Frames of a video file, or of every video file in a folder (sorted, recursive).

    Decoded with decord; files or output sizes decord gets wrong (it pads the rows of some narrow
    videos) are repaired or decoded with PyAV instead. Grayscale videos come out as RGB.
    ``segment`` increases when the next file starts. ``loop=True`` starts over at the end.
    ``width``/``height`` resize while decoding (``-1`` keeps the video's).
    """

    def __init__(self, spec: str, loop: bool = False, width: int = -1, height: int = -1) -> None:
        path = spec[len("file:"):] if spec.startswith("file:") else spec
        if not path.strip():
            raise source_error(f"malformed source {spec!r}: use file:PATH or just PATH to a video file or folder")
        _check_size(width, height)
        p = Path(path).expanduser()
        if not p.exists():
            raise source_error(f"video file or folder {path!r} does not exist")
        if p.is_dir():
            files = _video_files(p)
            if not files:
                raise source_error(f"folder {path!r} holds no video files ({', '.join(VIDEO_EXTENSIONS)})")
        else:
            files = [p]
        self.files, self.loop, self.size = files, loop, (width, height)
        self._index = -1
        self._reader = None
        self._pending = None
        self._open(0)
        super().__init__(spec, self._fps)
        self.segment = 0

    def _open(self, index: int) -> None:
        f = str(self.files[index])
        reader, first = open_video_frames(f, *self.size)
        if self._reader is not None:
            self._reader.close()
        self._reader, self._index, self._pending, self._pos = reader, index, first, 0
        self._fps = reader.fps
        self.current_file = f

    def _next_file(self) -> None:
        """Move to the next file (or back to the first with ``loop``); ``StopIteration`` after the last."""
        nxt = self._index + 1
        if nxt >= len(self.files):
            if not self.loop:
                raise StopIteration
            nxt = 0
        self._open(nxt)
        self.segment += 1

    def _read(self) -> np.ndarray:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        try:
            return self._reader.read()
        except StopIteration:
            raise
        except Exception as e:  # noqa: BLE001 - a decoder error in the middle of a file
            raise source_error(f"decoding {self.current_file!r} failed at frame {self._pos} "
                               f"({_first_line(e)})") from None

    def _next(self) -> np.ndarray:
        while True:
            try:
                frame = self._read()
            except StopIteration:
                self._next_file()
                continue
            self._pos += 1
            return frame

    def close(self) -> None:
        super().close()
        if self._reader is not None:
            self._reader.close()
        self._reader = None


def open_file(spec: str, **options) -> FileSource:
    return _construct(FileSource, spec, options)


# -- synthetic ---------------------------------------------------------------------------------
def synthetic_size(spec: str) -> int:
    """The frame size of a ``synthetic`` spec: ``synthetic`` (64) or ``synthetic:SIZE``."""
    from slimkit_video.data.synthetic import MIN_SIZE

    _, _, rest = spec.partition(":")
    rest = rest.strip()
    if not rest:
        return 64
    if not rest.isdigit() or int(rest) < MIN_SIZE:
        raise source_error(f"malformed source {spec!r}: use synthetic or synthetic:SIZE with SIZE a whole number of "
                           f"pixels >= {MIN_SIZE} (e.g. synthetic:64)")
    return int(rest)


def _check_synthetic_options(spec: str, size, clip_len, fps) -> None:
    from slimkit_video.data.synthetic import MIN_SIZE

    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_SIZE:
        raise ConfigError(f"size={size!r} for source {spec!r} must be a whole number of pixels >= {MIN_SIZE} "
                          f"(a smaller frame cannot show the moving shape)")
    if not isinstance(clip_len, int) or isinstance(clip_len, bool) or clip_len < 2:
        raise ConfigError(f"clip_len={clip_len!r} for source {spec!r} must be at least 2 frames (the shape must "
                          f"move to have a direction)")
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not fps > 0:
        raise ConfigError(f"fps={fps!r} for source {spec!r} must be a positive number of frames per second")


class SyntheticSource(FrameSource):
    """The generated temporal-order stream (endless): consecutive clips of a shape moving left or
    right; ``label`` is the true class of the current clip. Spec ``synthetic`` or
    ``synthetic:SIZE`` (pixels, at least 16; default 64). Options: ``size``, ``seed``, ``clip_len``
    (at least 2), ``fps``."""

    def __init__(self, spec: str = "synthetic", size: Optional[int] = None, seed: int = 0,
                 clip_len: int = 16, fps: float = 15.0) -> None:
        from slimkit_video.data.synthetic import CLASSES, synthetic_frames

        size = synthetic_size(spec) if size is None else size
        _check_synthetic_options(spec, size, clip_len, fps)
        self.classes = CLASSES
        self._frames = synthetic_frames(size=size, seed=seed, clip_len=clip_len)
        super().__init__(spec, fps)

    @property
    def label(self) -> Optional[int]:
        return self._frames.label if self._frames.label >= 0 else None

    @property
    def frame_in_clip(self) -> int:
        return self._frames.frame_in_clip

    def _next(self) -> np.ndarray:
        return next(self._frames)


def open_synthetic(spec: str, **options) -> SyntheticSource:
    return _construct(SyntheticSource, spec, options)


# -- lavfi (PyAV) ------------------------------------------------------------------------------
class LavfiSource(FrameSource):
    """Frames of an FFmpeg lavfi filter graph through PyAV, e.g. ``lavfi:testsrc2=size=224x224:rate=25``.

    Endless for generator filters unless the graph sets a duration (``testsrc2=d=5``)."""

    def __init__(self, spec: str, timeout: float = 10.0) -> None:
        import av

        _, _, graph = spec.partition(":")
        if not graph.strip():
            raise source_error(f"malformed source {spec!r}: use lavfi:GRAPH with an FFmpeg filter graph, "
                               f"e.g. 'lavfi:testsrc2=size=224x224:rate=25'")
        try:
            container = _call_with_timeout(lambda: av.open(graph, format="lavfi"), timeout, f"lavfi {graph!r}")
        except av.FFmpegError as e:
            raise source_error(f"cannot open lavfi graph {graph!r} ({_first_line(e)})") from None
        if not container.streams.video:
            container.close()
            raise source_error(f"lavfi graph {graph!r} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or 25
        self._container = container
        self._decoder = container.decode(video=0)
        super().__init__(spec, float(rate))

    def _next(self) -> np.ndarray:
        import av

        try:
            frame = next(self._decoder)
        except av.FFmpegError as e:
            raise source_error(f"lavfi source {self.name!r} failed while decoding ({_first_line(e)})") from None
        return frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        super().close()
        try:
            self._container.close()
        except Exception:  # pragma: no cover
            pass


def open_lavfi(spec: str, **options) -> LavfiSource:
    return _construct(LavfiSource, spec, options)


def register_sources(register) -> None:
    register("webcam", open_webcam, "an OpenCV camera: webcam:N (device index N, default 0)")
    register("file", open_file, "a video file or a folder of videos (decord): file:PATH or just PATH")
    register("synthetic", open_synthetic, "the generated temporal-order stream (shape moving left/right), endless")
    register("lavfi", open_lavfi, "an FFmpeg lavfi graph via PyAV, e.g. lavfi:testsrc2=size=224x224:rate=25")
