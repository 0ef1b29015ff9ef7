"""Progress bars and time estimates for every step that can take more than a few seconds.

One switch for all of slimkit: bars (tqdm, with the elapsed time and an estimate of the time left)
are drawn on a terminal and hidden under ``slimkit --quiet`` (which sets ``SLIMKIT_QUIET=1``, so
child processes stay quiet too). When stderr is not a terminal (a log file, ``nohup``, CI, a pipe), a
loop that is still running after ``LOG_DELAY_S`` seconds writes one plain line (count, elapsed, time left)
every ``LOG_INTERVAL_S`` seconds and a last one when it ends, so an hour-long benchmark in a log shows
where it is without filling the log with carriage returns; short loops write nothing.

    from slimkit.progress import bar, step
    for batch in bar(loader, total=len(loader), desc="train"):   # tqdm, or a plain iterator when quiet
        ...
    with step("converting R3D-18"):                               # "converting R3D-18 ..." then the time it took
        ...
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator

QUIET_ENV = "SLIMKIT_QUIET"
LOG_DELAY_S = 30.0       # off a terminal: a loop shorter than this writes nothing
LOG_INTERVAL_S = 60.0    # off a terminal: at most one line per this many seconds


def quiet_requested() -> bool:
    """True when ``SLIMKIT_QUIET`` is set to anything but ``""`` or ``"0"`` (``slimkit --quiet`` sets it)."""
    return os.environ.get(QUIET_ENV, "").strip() not in ("", "0")


def on_terminal(stream: Any = None) -> bool:
    """True when ``stream`` (default: stderr, where bars go) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def show_progress(requested: bool = True) -> bool:
    """Whether to draw progress: asked for, not ``--quiet``, and stderr is a terminal."""
    return bool(requested) and not quiet_requested() and on_terminal()


def log_progress(requested: bool = True) -> bool:
    """Whether to write plain progress lines: asked for, not ``--quiet``, and stderr is *not* a terminal."""
    return bool(requested) and not quiet_requested() and not on_terminal()


class _Lines:
    """A stream for tqdm that turns each redraw (``"\\r" + bar``) into one whole line of a log."""

    def __init__(self, stream: Any):
        self.stream, self.last = stream, ""

    def write(self, s: str) -> int:
        line = s.replace("\r", "").strip()
        if line and line != self.last:             # tqdm redraws the final state when it closes
            self.last = line
            self.stream.write(line + "\n")
            self.stream.flush()
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


def bar(iterable: Iterable | None = None, *, total: int | float | None = None, desc: str = "",
        initial: int = 0, enabled: bool = True, unit: str = "it", leave: bool = False, **kwargs: Any):
    """A tqdm bar (elapsed time, rate, time left): drawn on a terminal, plain lines in a log after
    ``LOG_DELAY_S`` (see the module docstring), silent under ``--quiet`` or ``enabled=False``."""
    from tqdm.auto import tqdm

    if log_progress(enabled):
        from tqdm import tqdm as plain

        log = dict(leave=True, file=_Lines(sys.stderr), delay=LOG_DELAY_S, mininterval=LOG_INTERVAL_S,
                   maxinterval=LOG_INTERVAL_S, ascii=True, ncols=100)
        rest = {k: v for k, v in kwargs.items() if k not in log and k != "dynamic_ncols"}  # a log's own pace
        return plain(iterable, total=total, desc=desc, initial=initial, unit=unit, **log, **rest)
    return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, leave=leave,
                disable=not show_progress(enabled), dynamic_ncols=True, **kwargs)


def progress_callback(desc: str, enabled: bool = True) -> Callable[[Iterable, int], Iterable]:
    """``fn(iterable, total)`` wrapping ``iterable`` in :func:`bar`: the form HAT measure and search take."""
    return lambda iterable, total: bar(iterable, total=total, desc=desc, enabled=enabled)


@contextlib.contextmanager
def step(desc: str, enabled: bool = True) -> Iterator[None]:
    """Announce one long step that has no natural count: ``desc ...`` now, ``desc: 12.3 s`` when done."""
    shown = show_progress(enabled)
    if shown:
        print(f"{desc} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    if shown:
        print(f"{desc}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


__all__ = ["QUIET_ENV", "LOG_DELAY_S", "LOG_INTERVAL_S", "quiet_requested", "on_terminal", "show_progress",
           "log_progress", "bar", "progress_callback", "step"]
