"""The built-in frame sources: ``webcam:N``, video files/folders, ``synthetic``, ``lavfi:SPEC``.

Open them with ``slimkit.open_source(spec)``; each returns a :class:`FrameSource` (see
``base.py``) of RGB ``uint8`` ``(H, W, 3)`` frames. Problems (no camera, a missing or unreadable
file, a bad filter graph) raise ``slimkit.SourceError`` naming the problem and listing the
sources; nothing waits forever (camera opening and first read have a timeout).
"""
from __future__ import annotations

import glob
import os
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from .base import FrameSource, source_error

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


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


class WebcamSource(FrameSource):
    """Frames from an OpenCV camera (``webcam:N`` = device index ``N``, or ``webcam:/dev/videoN``)."""

    live = True

    def __init__(self, spec: str, timeout: float = 5.0, width: Optional[int] = None,
                 height: Optional[int] = None) -> None:
        import cv2

        _, _, rest = spec.partition(":")
        rest = rest.strip() or "0"
        device = int(rest) if rest.isdigit() else rest
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
    return WebcamSource(spec, **options)


# -- files and folders (decord) ----------------------------------------------------------------
def _video_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


class FileSource(FrameSource):
    """Frames of a video file, or of every video file in a folder (sorted, recursive), via decord.

    ``segment`` increases when the next file starts. ``loop=True`` starts over at the end.
    ``width``/``height`` resize while decoding.
    """

    def __init__(self, spec: str, loop: bool = False, width: int = -1, height: int = -1) -> None:
        path = spec[len("file:"):] if spec.startswith("file:") else spec
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
        self._pos = 0
        self._open(0)
        super().__init__(spec, self._fps)
        self.segment = 0

    def _open(self, index: int) -> None:
        import decord

        f = self.files[index]
        try:
            reader = decord.VideoReader(str(f), ctx=decord.cpu(0), width=self.size[0], height=self.size[1])
            n = len(reader)
        except Exception as e:  # decord raises RuntimeError / DECORDError
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise source_error(f"cannot read video file {str(f)!r} ({msg[:120]})") from None
        if n == 0:
            raise source_error(f"video file {str(f)!r} has no frames")
        self._reader, self._index, self._pos, self._len = reader, index, 0, n
        self._fps = reader.get_avg_fps() or 25.0
        self.current_file = str(f)

    def _next(self) -> np.ndarray:
        while self._pos >= self._len:
            nxt = self._index + 1
            if nxt >= len(self.files):
                if not self.loop:
                    raise StopIteration
                nxt = 0
            self._open(nxt)
            self.segment += 1
        try:
            frame = self._reader.next().asnumpy()
        except StopIteration:
            self._pos = self._len
            return self._next()
        except Exception as e:
            raise source_error(f"decoding {self.current_file!r} failed at frame {self._pos} ({e})") from None
        self._pos += 1
        return frame

    def close(self) -> None:
        super().close()
        self._reader = None


def open_file(spec: str, **options) -> FileSource:
    return FileSource(spec, **options)


# -- synthetic ---------------------------------------------------------------------------------
class SyntheticSource(FrameSource):
    """The generated temporal-order stream (endless): consecutive clips of a shape moving left or
    right; ``label`` is the true class of the current clip. Spec ``synthetic`` or
    ``synthetic:SIZE`` (pixels, default 64). Options: ``seed``, ``clip_len``, ``fps``."""

    def __init__(self, spec: str = "synthetic", size: Optional[int] = None, seed: int = 0,
                 clip_len: int = 16, fps: float = 15.0) -> None:
        from slimkit_video.data.synthetic import CLASSES, synthetic_frames

        _, _, rest = spec.partition(":")
        if size is None:
            try:
                size = int(rest) if rest else 64
            except ValueError:
                raise source_error(f"synthetic source size must be an int (synthetic:64), got {rest!r}") from None
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
    return SyntheticSource(spec, **options)


# -- lavfi (PyAV) ------------------------------------------------------------------------------
class LavfiSource(FrameSource):
    """Frames of an FFmpeg lavfi filter graph through PyAV, e.g. ``lavfi:testsrc2=size=224x224:rate=25``.

    Endless for generator filters unless the graph sets a duration (``testsrc2=d=5``)."""

    def __init__(self, spec: str, timeout: float = 10.0) -> None:
        import av

        _, _, graph = spec.partition(":")
        if not graph:
            raise source_error("lavfi needs a filter graph, e.g. 'lavfi:testsrc2=size=224x224:rate=25'")
        try:
            container = _call_with_timeout(lambda: av.open(graph, format="lavfi"), timeout, f"lavfi {graph!r}")
        except av.FFmpegError as e:
            raise source_error(f"cannot open lavfi graph {graph!r} ({e})") from None
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
            raise source_error(f"lavfi source {self.name!r} failed while decoding ({e})") from None
        return frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        super().close()
        try:
            self._container.close()
        except Exception:  # pragma: no cover
            pass


def open_lavfi(spec: str, **options) -> LavfiSource:
    return LavfiSource(spec, **options)


def register_sources(register) -> None:
    register("webcam", open_webcam, "an OpenCV camera: webcam:N (device index N, default 0)")
    register("file", open_file, "a video file or a folder of videos (decord): file:PATH or just PATH")
    register("synthetic", open_synthetic, "the generated temporal-order stream (shape moving left/right), endless")
    register("lavfi", open_lavfi, "an FFmpeg lavfi graph via PyAV, e.g. lavfi:testsrc2=size=224x224:rate=25")
