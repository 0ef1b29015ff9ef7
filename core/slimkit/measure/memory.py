"""Peak memory of a callable: live tensor bytes it allocates, and the process's peak RSS."""
from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _TensorBytes(TorchDispatchMode):
    """Tracks storages created inside the mode; frees are seen through weakref finalizers."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int, nbytes: int) -> None:
        if self.live.pop(key, None) is not None:
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                s = t.untyped_storage()
                key = s.data_ptr()
                if key and key not in self.live:
                    n = s.nbytes()
                    self.live[key] = n
                    self.current += n
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(s, self._free, key, n)
        return out


def _rss_peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_peak_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class MemoryResult:
    """Peak bytes: ``peak_tensor_bytes`` allocated by the call (weights excluded),
    ``peak_rss_bytes`` of the whole process during the call (None where unknown)."""

    peak_tensor_bytes: int
    peak_rss_bytes: int | None
    end_tensor_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, MemoryResult]:
    """Run ``fn()`` once and return ``(its result, MemoryResult)``.

    On CUDA the allocator's own peak is reported as ``peak_tensor_bytes``.
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        return out, MemoryResult(peak, None, torch.cuda.memory_allocated() - base)
    reset = _rss_peak_reset()
    tracker = _TensorBytes()
    with tracker:
        out = fn()
    rss = _rss_peak_bytes() if reset else None
    return out, MemoryResult(tracker.peak, rss, tracker.current)
