"""Atomic, complete saves and checked loads.

Every file slimkit writes goes through this module, so that a kill at any moment leaves either
the old complete file (or folder) or the new one, never a mix:

- :func:`atomic_write_text` / :func:`atomic_write_bytes` write ``path.tmp-<pid>-<random>`` beside
  the target, ``fsync`` it and ``os.replace`` it onto the target (atomic on POSIX and Windows).
- :func:`atomic_folder` yields a fresh temporary folder beside the target; when the block ends
  without an error the old folder (if any) is moved aside, the new one renamed into place and the
  old one deleted. Files of an older save that the new one does not write are therefore gone.
  Between the two renames a kill leaves the old folder under ``<target>.old-*``; :func:`recover_folder`
  (called by :func:`atomic_folder` and by the loaders) puts it back.
- :func:`read_json` and :func:`load_safetensors` name the file and the fix when it is missing,
  truncated or not what it should be, instead of a library error that names no file.

Nothing here unpickles: tensors travel as safetensors, everything else as JSON.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

from .errors import SlimkitError


class FileFormatError(SlimkitError, ValueError):
    """A file is missing, truncated or not in the format expected (the message names the file and the fix)."""


def _temp_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file beside it, fsync, rename); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target, "tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON (with a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _old_copies(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.old-*"))


def recover_folder(path: str | os.PathLike) -> Path:
    """Finish or undo an :func:`atomic_folder` swap that a kill interrupted; return the path.

    If the target is missing but a moved-aside old copy exists, the old copy is put back. Stale
    temporary folders and old copies beside a present target are removed.
    """
    target = Path(path)
    if not target.parent.exists():
        return target
    olds = _old_copies(target)
    if not target.exists() and olds:
        os.replace(olds[-1], target)
        olds = olds[:-1]
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in target.parent.glob(f".{target.name}.new-*"):
        pid = tmp.name.rsplit("-", 2)[-2]
        if not pid.isdigit() or not _process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process
        return True
    return True


def _link_tree(src: Path, dst: Path) -> None:
    """Recreate ``src`` under ``dst`` with hard links (a copy where links are impossible)."""
    for f in src.rglob("*"):
        rel = dst / f.relative_to(src)
        if f.is_dir():
            rel.mkdir(parents=True, exist_ok=True)
        elif f.is_file():
            rel.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, rel)
            except OSError:
                shutil.copy2(f, rel)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write a folder atomically: ``with atomic_folder(d) as tmp: <write files into tmp>``.

    On success the finished folder replaces ``d`` (an older ``d`` is removed, with every file
    the new save did not write); on an error, or a kill, ``d`` is left as it was. ``keep`` names
    entries of the old ``d`` (e.g. a ``checkpoints`` sub-folder) carried into the new one, as hard
    links made before the swap, so they survive a kill at any moment too.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise SlimkitError(f"{str(target)!r} is a file, not a folder; choose a folder path to save into")
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target)
    tmp = _temp_name(target, "new")
    tmp.mkdir()
    try:
        yield tmp
        for name in keep:
            old_entry = target / name
            if old_entry.is_dir() and not (tmp / name).exists():
                _link_tree(old_entry, tmp / name)
            elif old_entry.is_file() and not (tmp / name).exists():
                os.link(old_entry, tmp / name)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        old = None
        if target.exists():
            old = _temp_name(target, "old")
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# -- checked loads ------------------------------------------------------------------------------
def read_json(path: str | os.PathLike, what: str = "JSON file", fix: str = "write it again") -> Any:
    """Parse the JSON file at ``path``; a missing, unreadable or malformed file raises
    :class:`FileFormatError` naming the file, the problem and ``fix``."""
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"{what} {str(p)!r} does not exist; {fix}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{what} {str(p)!r} cannot be read ({type(e).__name__}: {e}); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        state = "is empty" if not text.strip() else f"is not valid JSON ({e.msg} at line {e.lineno})"
        raise FileFormatError(f"{what} {str(p)!r} {state}, probably truncated or edited by hand; {fix}") from None


def check_safetensors(path: str | os.PathLike, fix: str = "save it again") -> dict[str, tuple[str, list[int]]]:
    """Validate a safetensors file's header against its size without reading the tensors.

    Returns ``{name: (dtype, shape)}``; a missing, truncated or corrupt file raises
    :class:`FileFormatError` naming the file, what is wrong and ``fix``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"weights file {str(p)!r} does not exist; {fix}")
    size = p.stat().st_size
    bad = f"weights file {str(p)!r}"
    if size < 8:
        raise FileFormatError(f"{bad} is truncated ({size} bytes, not even a header); {fix}")
    with open(p, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or 8 + n > size:
            raise FileFormatError(f"{bad} is truncated or not a safetensors file (header of {n} bytes in a "
                                  f"{size}-byte file); {fix}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FileFormatError(f"{bad} has a corrupt header, so it is not a safetensors file; {fix}") from None
    if not isinstance(header, dict):
        raise FileFormatError(f"{bad} has a corrupt header, so it is not a safetensors file; {fix}")
    end = 0
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
            out[name] = (str(info["dtype"]), [int(s) for s in info["shape"]])
        except (KeyError, TypeError, ValueError, IndexError):
            raise FileFormatError(f"{bad} has a corrupt entry for {name!r}; {fix}") from None
    if 8 + n + end > size:
        raise FileFormatError(f"{bad} is truncated: its header describes {8 + n + end} bytes, the file has "
                              f"{size}; {fix}")
    return out


def load_safetensors(path: str | os.PathLike, device: str = "cpu", fix: str = "save it again") -> dict:
    """``safetensors.torch.load_file`` after :func:`check_safetensors`, so a bad file is named."""
    from safetensors.torch import load_file

    check_safetensors(path, fix)
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # noqa: BLE001 - any library failure becomes one sentence naming the file
        raise FileFormatError(f"weights file {str(path)!r} cannot be read ({type(e).__name__}: {e}); {fix}") from None


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``tensors`` (name -> tensor) as safetensors atomically (contiguous copies where needed)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)


__all__ = ["FileFormatError", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_folder",
           "recover_folder", "read_json", "check_safetensors", "load_safetensors", "save_safetensors"]
