"""The fused decode kernels of the grouped pq cache (``native.c``), built with the system C compiler.

``kernels()`` compiles ``native.c`` once into ``$SLIMKIT_CACHE/native/`` (the file name carries a hash of
the source, the flags, the compiler's version and the CPU, so an edit or another machine builds anew; the
build writes a temporary file and renames it, so an interrupted or concurrent build never leaves a broken
library) and loads it with ``ctypes``. It returns ``None`` when the kernels cannot be had: no compiler
(``CC``, else ``cc``), a failed build, ``SLIMKIT_NATIVE=0``, or a platform other than Linux/macOS. Then
``attention.py`` runs the same arithmetic in PyTorch ops, and a single warning says why and what to do.

``key_scores`` and ``value_output`` check shapes, dtypes and contiguity and call the kernels; their
semantics are in ``native.c`` and equal ``attention._KeyReader.scores`` and ``attention._value_output``'s
PyTorch path up to float rounding (the tests compare them).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
ENV_SWITCH = "SLIMKIT_NATIVE"
FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros",
         "-fno-trapping-math")
#: tried first; a compiler that does not know it (some clang versions on arm64) builds without it
TUNE_FLAGS = ("-march=native",)
#: the largest head_dim the kernels take (``MAX_D`` in native.c); wider heads use the PyTorch path
MAX_HEAD_DIM = 1024

_lock = threading.Lock()
_state: dict = {}


def cache_folder() -> Path:
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit")) / "native"


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def _cpu_signature() -> str:
    """Something that changes when ``-march=native`` would generate different code."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _library_path(cc: str) -> Path:
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS + TUNE_FLAGS).encode(), version.encode(), _cpu_signature().encode(),
                 platform.machine().encode()):
        h.update(part)
        h.update(b"\0")
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    return cache_folder() / f"pq_native-{h.hexdigest()[:16]}{suffix}"


def _build(cc: str, target: Path) -> None:
    """Compile ``native.c`` into ``target`` (a temporary file renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        for flags in (FLAGS + TUNE_FLAGS, FLAGS):
            res = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
            if res.returncode == 0:
                break
        else:
            lines = (res.stderr or res.stdout).strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"exit status {res.returncode}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.pq_key_scores.argtypes = [p, p, i32, p, i32, p, p, i64, i64, i64, i64, i64, p]
    lib.pq_key_scores.restype = i32
    lib.pq_value_output.argtypes = [p, i64, p, i32, p, p, i64, i64, i64, i64, i64, p]
    lib.pq_value_output.restype = i32
    return lib


def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"{ENV_SWITCH}=0 is set"
    if sys.platform not in ("linux", "darwin"):
        return None, f"the kernels are built on Linux and macOS only (this is {sys.platform})"
    cc = _compiler()
    if cc is None:
        return None, (f"no C compiler was found ({os.environ.get('CC') or 'cc'}); install one "
                      f"(e.g. apt-get install gcc) or point CC at it")
    target = _library_path(cc)
    for attempt in range(2):
        if not target.exists():
            try:
                _build(cc, target)
            except Exception as e:  # noqa: BLE001  (compiler missing headers, full disk, ...)
                return None, f"building {SOURCE.name} with {cc} failed: {e}"
        try:
            return _declare(ctypes.CDLL(str(target))), ""
        except OSError as e:  # a damaged library file: build it again once
            if attempt:
                return None, f"loading {target} failed: {e}"
            target.unlink(missing_ok=True)
    return None, "unreachable"


def kernels() -> ctypes.CDLL | None:
    """The loaded kernels, built on first use; ``None`` (with one warning per process) when unavailable."""
    with _lock:
        if "lib" not in _state:
            lib, why = _load()
            _state["lib"], _state["why"] = lib, why
            if lib is None and why and not why.startswith(ENV_SWITCH):
                warnings.warn(f"progressive-quant: the fused decode kernels are not used because {why}; the "
                              f"packed cache decodes with PyTorch ops instead (same results, slower)",
                              RuntimeWarning, stacklevel=2)
        return _state["lib"]


def unavailable_reason() -> str:
    """Why ``kernels()`` returned ``None`` ('' when they are loaded)."""
    kernels()
    return _state["why"]


def reset() -> None:
    """Forget the loaded library, so that the next ``kernels()`` looks again (tests, ``SLIMKIT_NATIVE``)."""
    with _lock:
        _state.clear()


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can run on these tensors (CPU, the kernels loaded)."""
    return all(t.device.type == "cpu" for t in tensors) and kernels() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
    return t.contiguous()


def key_scores(q: torch.Tensor, msb: torch.Tensor, msb_bits: int, lsb: torch.Tensor | None, lsb_bits: int,
               scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    """``q [B, H, R, D]`` float32 against keys ``code * scale + zero`` -> logits ``[B, H, R, T]`` float32.

    ``msb`` / ``lsb``: packed planes ``uint8 [B, H, T * bits / 8, D]`` (``lsb=None``: the code is the MSB
    code alone); ``scale``, ``zero``: ``[B, H, T / group, D]`` per group of ``group`` tokens and channel."""
    b, h, r, d = q.shape
    t = msb.shape[2] * 8 // msb_bits
    n = t // group
    q = _check("q", q, torch.float32, (b, h, r, d))
    msb = _check("msb plane", msb, torch.uint8, (b, h, t * msb_bits // 8, d))
    if lsb is not None:
        lsb = _check("lsb plane", lsb, torch.uint8, (b, h, t * lsb_bits // 8, d))
    scale = _check("scale", scale, torch.float32, (b, h, n, d))
    zero = _check("zero", zero, torch.float32, (b, h, n, d))
    out = torch.empty(b, h, r, t, dtype=torch.float32)
    rc = kernels().pq_key_scores(_ptr(q), _ptr(msb), msb_bits, _ptr(lsb), lsb_bits if lsb is not None else 0,
                                 _ptr(scale), _ptr(zero), b * h, r, t, d, group, _ptr(out))
    if rc:
        raise ValueError(f"pq_key_scores refused head_dim={d} (at most {MAX_HEAD_DIM})")
    return out


def value_output(p: torch.Tensor, codes: torch.Tensor, bits: int, scale: torch.Tensor, zero: torch.Tensor,
                 group: int) -> torch.Tensor:
    """``p [B, H, R, T]`` float32 (a column slice of wider rows is fine) times values ``code * scale + zero``
    -> ``[B, H, R, D]`` float32. ``codes``: ``uint8 [B, H, T * bits / 8, D]``; ``scale``, ``zero``: ``[B, H, T,
    D / group]`` per token and group of channels."""
    b, h, r, t = p.shape
    d = codes.shape[-1]
    if p.stride(-1) != 1 or p.stride(-2) < t or p.stride(1) != r * p.stride(-2) or p.stride(0) != h * p.stride(1):
        p = p.contiguous()
    ldp = p.stride(-2)
    if p.dtype != torch.float32:
        raise ValueError(f"p: expected float32, got {p.dtype}")
    codes = _check("value codes", codes, torch.uint8, (b, h, t * bits // 8, d))
    scale = _check("value scale", scale, torch.float32, (b, h, t, d // group))
    zero = _check("value zero", zero, torch.float32, (b, h, t, d // group))
    out = torch.empty(b, h, r, d, dtype=torch.float32)
    rc = kernels().pq_value_output(_ptr(p), ldp, _ptr(codes), bits, _ptr(scale), _ptr(zero), b * h, r, t, d,
                                   group, _ptr(out))
    if rc:
        raise ValueError(f"pq_value_output refused head_dim={d} with value_group={group}")
    return out
