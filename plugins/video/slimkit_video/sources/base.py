"""The frame-source protocol shared by every source.

A source is an iterator of RGB ``uint8`` frames of shape ``(H, W, 3)`` (``FrameSource`` turns grey
and RGBA frames of a subclass into RGB and refuses other shapes with a ``SourceError``) with:

- ``fps``: its frame rate (frames per second of video time);
- ``live``: ``True`` when frames arrive in real time by themselves (a camera); ``False`` when
  the reader must pace them (files, generated streams);
- ``segment``: a counter that changes when a new continuous piece of video starts (a new file
  of a folder): the right moment to reset an online model's buffers;
- ``label`` / ``classes``: the true class of the current frame where the source knows it
  (``synthetic``), else ``None``;
- ``close()``; sources are context managers.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np

from slimkit.errors import SourceError, one_of


def known_sources_hint() -> str:
    """'known sources are ...' for error messages (scheme names plus 'a path to a video file or folder')."""
    try:
        from slimkit.api import sources
        names = sorted(sources())
    except Exception:  # pragma: no cover - host not ready
        names = ["file", "lavfi", "synthetic", "webcam"]
    return f"known sources are {one_of(names)} (or a path to a video file or folder)"


def source_error(problem: str) -> SourceError:
    return SourceError(f"{problem}; {known_sources_hint()}")


def as_rgb_frame(frame: np.ndarray, source: str) -> np.ndarray:
    """``frame`` as RGB ``uint8`` ``(H, W, 3)``: grey ``(H, W)`` / ``(H, W, 1)`` is repeated to three
    channels and RGBA loses its alpha; anything else (an empty frame, other channel counts) raises
    ``SourceError`` naming the shape."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[0] < 1 or frame.shape[1] < 1 or frame.shape[2] not in (1, 3, 4):
        raise source_error(f"source {source!r} delivered a frame of shape {frame.shape}, not an image (H, W, 3), "
                           f"(H, W) or (H, W, 1) grey, or (H, W, 4) RGBA; fix or re-encode the source")
    if frame.dtype != np.uint8:
        raise source_error(f"source {source!r} delivered {frame.dtype} pixels, not uint8 (0-255); "
                           f"convert its frames with frame.astype(numpy.uint8)")
    if frame.shape[2] == 1:
        return np.repeat(frame, 3, axis=2)
    if frame.shape[2] == 4:
        return np.ascontiguousarray(frame[:, :, :3])
    return frame


class FrameSource:
    """Base class: subclasses implement ``_next() -> np.ndarray`` (raise ``StopIteration`` at the end)."""

    live: bool = False
    classes: Optional[Sequence[str]] = None

    def __init__(self, name: str, fps: float) -> None:
        self.name = name
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.segment = 0
        self.frames_read = 0
        self._closed = False

    @property
    def label(self) -> Optional[int]:
        return None

    def _next(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self._closed:
            raise StopIteration
        frame = as_rgb_frame(self._next(), self.name)
        self.frames_read += 1
        return frame

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, fps={self.fps:g})"
