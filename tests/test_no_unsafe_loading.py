"""No unsafe loading anywhere: nothing that can run code hidden in a file.

Scans every ``.py`` file under core/, plugins/, scripts/ and tests/ for ``torch.load``
without ``weights_only=True``, pickle (``pickle``, ``cPickle``, ``dill``, ``cloudpickle``,
``joblib.load``, ``np.load(..., allow_pickle=True)``, ``pandas.read_pickle``),
``trust_remote_code``, builtin ``eval``/``exec`` and ``yaml.load`` without a safe loader.
Calls are found with ``ast`` (multi-line calls included; ``model.eval()`` is a method,
not the builtin). Python source handed to a subprocess as a string literal is checked too,
with regular expressions over the literal's text. Comments and docstrings may mention
these names.
"""
from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED_ROOTS = ("core", "plugins", "scripts", "tests")
SKIPPED_PARTS = {"__pycache__", "build", "dist", "node_modules"}

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle"}
NUMPY_NAMES = {"np", "numpy"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}

# checks on Python source inside string literals (code run with ``python -c``, ``exec`` ...)
STRING_PATTERNS = (
    (re.compile(r"\btorch\.load\((?![^\n]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
    (re.compile(r"\btrust_remote_code\s*=\s*(?!False\b)"), "trust_remote_code"),
    (re.compile(r"^\s*(import|from)\s+(c?pickle|_pickle|dill|cloudpickle)\b", re.M), "pickle import"),
    (re.compile(r"\ballow_pickle\s*=\s*True"), "allow_pickle=True"),
    (re.compile(r"\byaml\.(unsafe_)?load\((?![^\n]*Loader\s*=\s*yaml\.C?SafeLoader)"), "yaml.load without SafeLoader"),
)


# -- what counts as unsafe ----------------------------------------------------------------------
def _dotted(node: ast.AST) -> str:
    """``torch.load`` for ``Attribute(Name('torch'), 'load')``; ``""`` for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _yaml_loader_is_safe(call: ast.Call) -> bool:
    loader = _keyword(call, "Loader")
    if loader is None and len(call.args) > 1:
        loader = call.args[1]
    return loader is not None and _dotted(loader).rsplit(".", 1)[-1] in SAFE_YAML_LOADERS


def unsafe_call(call: ast.Call) -> str | None:
    """Why ``call`` is unsafe, or None."""
    func = _dotted(call.func)
    if func == "torch.load" and not _is_const(_keyword(call, "weights_only"), True):
        return "torch.load without weights_only=True"
    if func in {"eval", "exec"}:
        return f"builtin {func}()"
    if func.split(".")[0] in PICKLE_MODULES or func in {"joblib.load", "pd.read_pickle", "pandas.read_pickle"}:
        return f"{func}() unpickles"
    if func.rsplit(".", 1)[0] in NUMPY_NAMES and func.endswith(".load"):
        if not _is_const(_keyword(call, "allow_pickle"), False) and _keyword(call, "allow_pickle") is not None:
            return "np.load with allow_pickle"
    if func in {"yaml.unsafe_load", "yaml.full_load"}:
        return f"{func}()"
    if func == "yaml.load" and not _yaml_loader_is_safe(call):
        return "yaml.load without SafeLoader"
    trust = _keyword(call, "trust_remote_code")
    if trust is not None and not _is_const(trust, False):
        return "trust_remote_code"
    return None


def unsafe_import(node: ast.Import | ast.ImportFrom) -> str | None:
    """Why an import is unsafe (a pickle module), or None."""
    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    bad = [n for n in names if n.split(".")[0] in PICKLE_MODULES]
    return f"import {bad[0]}" if bad else None


def _docstring_ids(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (free text, not code)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _string_text(node: ast.AST) -> str | None:
    """The text of a string literal; f-string placeholders read as ``{}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def unsafe_code_in_string(text: str) -> list[str]:
    """Why Python source inside a string literal is unsafe (empty when it is not)."""
    return [why for pattern, why in STRING_PATTERNS if pattern.search(text)]


def _string_findings(source: str, node: ast.AST, text: str) -> list[tuple[int, str]]:
    """``(line, why)`` for unsafe code in one string literal, on the source line that holds it."""
    found = []
    raw_lines = (ast.get_source_segment(source, node) or "").splitlines()
    for why in unsafe_code_in_string(text):
        pattern = next(p for p, w in STRING_PATTERNS if w == why)
        offsets = [i for i, raw in enumerate(raw_lines) if pattern.search(raw)] or [0]
        found.extend((node.lineno + i, why) for i in offsets)
    return found


def scan_source(source: str) -> list[tuple[int, str]]:
    """``(line, why)`` for every unsafe call, import or code string in ``source``."""
    tree = ast.parse(source)
    docstrings = _docstring_ids(tree)
    found: list[tuple[int, str]] = []
    inside_fstring: set[int] = set()
    for node in ast.walk(tree):
        why = None
        if isinstance(node, ast.Call):
            why = unsafe_call(node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            why = unsafe_import(node)
        if why:
            found.append((node.lineno, why))
        if isinstance(node, ast.JoinedStr):
            inside_fstring.update(id(v) for v in node.values)
        text = _string_text(node)
        if text is not None and id(node) not in docstrings and id(node) not in inside_fstring:
            found.extend(_string_findings(source, node, text))
    return sorted(set(found))


def python_files() -> list[Path]:
    """Every .py file the scan covers (this file excluded: it names the patterns)."""
    me = Path(__file__).resolve()
    files = []
    for root in SCANNED_ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).parts
            if SKIPPED_PARTS & set(rel) or any(p.startswith(".") or p.endswith(".egg-info") for p in rel):
                continue
            if path.resolve() != me:
                files.append(path)
    return files


#: the only allowed findings, each with its reason: (file, words in the finding)
ALLOWED = {
    ("tests/test_docs.py", "exec"): "the docs test runs the README's own Python blocks, code of this repository",
}


def _allowed(rel: str, why: str) -> bool:
    return any(rel == path and word in why for path, word in ALLOWED)


# -- the checks ---------------------------------------------------------------------------------
def test_no_unsafe_loading_anywhere():
    files = python_files()
    assert len(files) > 20, "the scan found almost no files: is REPO right?"
    offenders = [f"{path.relative_to(REPO)}:{line}: {why}"
                 for path in files for line, why in scan_source(path.read_text(encoding="utf-8"))
                 if not _allowed(str(path.relative_to(REPO)), why)]
    assert not offenders, ("unsafe loading (use torch.load(..., weights_only=True) or safetensors, JSON, "
                           "yaml.safe_load, no pickle/eval/exec/trust_remote_code):\n" + "\n".join(offenders))


def test_the_scanner_finds_what_it_must():
    bad = textwrap.dedent('''
        import pickle
        from dill import loads
        state = torch.load(
            path,
            map_location="cpu",
        )
        torch.load(path, weights_only=False)
        np.load(f, allow_pickle=True)
        joblib.load(f)
        AutoModel.from_pretrained(d, trust_remote_code=True)
        eval(open(f).read())
        exec(text)
        yaml.load(f)
        yaml.load(f, Loader=yaml.Loader)
        code = "d = torch.load(p)\\nm = M.from_pretrained(x, trust_remote_code=True)"
        code = f"d = torch.load({p!r})\\n"
    ''')
    lines = [line for line, _ in scan_source(bad)]
    assert lines == [2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 16, 17], scan_source(bad)


def test_the_scanner_lets_safe_code_through():
    good = textwrap.dedent('''
        """Docstrings may say torch.load(path) or trust_remote_code=True."""
        # so may comments: eval(x), import pickle
        state = torch.load(
            path,
            map_location="cpu",
            weights_only=True,
        )
        model.eval()
        np.load(f)
        np.load(f, allow_pickle=False)
        yaml.safe_load(f)
        yaml.load(f, Loader=yaml.SafeLoader)
        AutoModel.from_pretrained(d, trust_remote_code=False)
        code = "d = torch.load(p, weights_only=True)"
    ''')
    assert scan_source(good) == []
