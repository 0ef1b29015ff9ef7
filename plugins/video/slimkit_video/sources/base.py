"""The frame-source protocol shared by every source.

A source is an iterator of RGB ``uint8`` frames of shape ``(H, W, 3)`` with:

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
        frame = self._next()
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
