"""The architecture stays drawable: no import circles, every technique folder the same shape,
no long functions in library code (CONTRIBUTING.md says why)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"slimkit": REPO / "core" / "slimkit", "slimkit_video": REPO / "plugins" / "video" / "slimkit_video",
            "slimkit_nlp": REPO / "plugins" / "nlp" / "slimkit_nlp"}
TECHNIQUES = [REPO / "plugins" / "video" / "slimkit_video" / t for t in ("tsm", "r2plus1d")] + \
             [REPO / "plugins" / "nlp" / "slimkit_nlp" / t for t in ("spatten", "pq", "lsra", "hat")]
TECHNIQUE_MODULES = {"__init__.py", "config.py", "transform.py", "registration.py", "README.md"}
MAX_FUNCTION_LINES = 80


def _modules(pkg: str, root: Path) -> dict[str, Path]:
    out = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root).with_suffix("").parts
        name = ".".join((pkg, *parts))
        out[name.removesuffix(".__init__")] = f
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of the same package that ``name`` imports (at module level or inside functions)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            # ``from . import x`` with x a module depends on x; on the package only when x is a name in it
            candidates = submodules or [target]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_no_import_circles(pkg):
    known = _modules(pkg, PACKAGES[pkg])
    graph = {m: _imports(m, p, known) for m, p in known.items()}
    assert _cycles(graph) == []


BENCHMARKS = "benchmarks"
#: the glue that registers a plugin's parts: it may name its benchmarks, nothing else in the library may
REGISTRATION_MODULES = {"registration", "plugin"}


def _in_benchmarks(module: str) -> bool:
    return BENCHMARKS in module.split(".")[1:]


def _library_imports_of_benchmarks(pkg: str, root: Path) -> list[str]:
    """``"<module> imports <benchmark module>"`` for every library module (not registration glue) that does."""
    known = _modules(pkg, root)
    return sorted(f"{m} imports {target}" for m, p in known.items()
                  if not _in_benchmarks(m) and m.split(".")[-1] not in REGISTRATION_MODULES
                  for target in _imports(m, p, known) if _in_benchmarks(target))


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_the_library_imports_nothing_from_benchmarks(pkg):
    """Benchmarks and demos import the library, never the other way round (only registration refers to them)."""
    wrong = _library_imports_of_benchmarks(pkg, PACKAGES[pkg])
    assert not wrong, "library modules import benchmark code:\n" + "\n".join(wrong)


def test_the_benchmark_check_finds_a_library_import(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    for f in ("__init__.py", "benchmarks/__init__.py", "benchmarks/speed.py"):
        (tmp_path / f).write_text("")
    (tmp_path / "registration.py").write_text("def register(r):\n    from .benchmarks import speed\n")
    (tmp_path / "lib.py").write_text("def f():\n    from .benchmarks.speed import run\n")
    assert _library_imports_of_benchmarks("pkg", tmp_path) == ["pkg.lib imports pkg.benchmarks.speed"]


@pytest.mark.parametrize("pkg", ["slimkit_video", "slimkit_nlp"])
def test_benchmarks_live_in_the_benchmarks_package(pkg):
    stray = sorted(str(f.relative_to(REPO)) for f in PACKAGES[pkg].rglob("bench*.py") if BENCHMARKS not in f.parts)
    assert not stray, f"move benchmark modules into {pkg}/benchmarks/ (CONTRIBUTING.md): {stray}"


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("folder", TECHNIQUES, ids=lambda p: p.name)
def test_every_technique_folder_has_the_same_shape(folder):
    missing = TECHNIQUE_MODULES - {p.name for p in folder.iterdir()}
    assert not missing, f"{folder.name} lacks {sorted(missing)} (see CONTRIBUTING.md)"


def _docstring_lines(node) -> int:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def test_no_long_functions_in_library_code():
    """Code lines (signature and body; the docstring does not count) of every library function."""
    long = []
    for root in PACKAGES.values():
        for f in root.rglob("*.py"):
            if "benchmarks" in f.parts:
                continue
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{f.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


#: the one module that may define a module-level ``__getattr__`` / ``__dir__``: the lazy-export helper's
LAZY_EXPORT_HELPER = REPO / "core" / "slimkit" / "parts.py"


def _own_module_getattrs(root: Path) -> list[str]:
    """``"<file>:<line> <name>"`` for every module-level ``def __getattr__`` / ``def __dir__`` under ``root``
    (a method of a class, such as a loader proxy's ``__getattr__``, is not a lazy export and does not count)."""
    found = []
    for f in sorted(root.rglob("*.py")):
        if f == LAZY_EXPORT_HELPER:
            continue
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in ("__getattr__", "__dir__"):
                found.append(f"{f.relative_to(root)}:{node.lineno} {node.name}")
    return found


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_lazy_exports_go_through_the_one_helper(pkg):
    """A package exports names lazily with ``__getattr__, __dir__ = slimkit.parts.lazy_exports(__name__, _EXPORTS)``,
    never with a ``__getattr__`` of its own (CONTRIBUTING.md)."""
    own = _own_module_getattrs(PACKAGES[pkg])
    assert not own, "use slimkit.parts.lazy_exports instead of writing __getattr__/__dir__:\n" + "\n".join(own)


def test_the_lazy_export_check_finds_an_own_getattr(tmp_path):
    (tmp_path / "__init__.py").write_text("def __getattr__(name):\n    raise AttributeError(name)\n")
    (tmp_path / "loader.py").write_text("class Proxy:\n    def __getattr__(self, name):\n        return name\n")
    assert _own_module_getattrs(tmp_path) == ["__init__.py:1 __getattr__"]


def test_lazy_exports_imports_on_first_use_and_names_the_module_when_missing():
    import sys
    import types

    from slimkit.parts import lazy_exports

    pkg = types.ModuleType("slimkit_lazy_probe")
    pkg.__getattr__, pkg.__dir__ = lazy_exports(pkg.__name__, {"dumps": "json", "nope": "json"})
    sys.modules[pkg.__name__] = pkg
    try:
        import json

        assert pkg.dumps is json.dumps and vars(pkg)["dumps"] is json.dumps  # stored: the next access is free
        assert {"dumps", "nope"} <= set(dir(pkg))
        with pytest.raises(AttributeError, match="module 'slimkit_lazy_probe' has no attribute 'missing'"):
            pkg.missing
        with pytest.raises(AttributeError, match="nope"):  # listed, but the module does not define it
            pkg.nope
    finally:
        del sys.modules[pkg.__name__]


def test_a_technique_takes_its_name_from_the_config_and_its_summary_from_the_registry():
    from slimkit.parts import technique
    from slimkit.registry import registry
    from slimkit_nlp.pq.config import ProgressiveQuantConfig

    t = technique(ProgressiveQuantConfig, lambda model, config: model, "ignored: the catalogue has one")
    assert (t.name, t.config_class) == ("progressive-quant", ProgressiveQuantConfig)
    assert t.summary == registry().techniques["progressive-quant"].summary


#: where a registration module may add commands: the ``cli`` its ``register_commands(cli)`` receives
CLICK_ADDERS = {"add_command", "command", "group"}


def _root_name(node: ast.expr) -> str | None:
    """``cli`` for ``cli.commands["nlp"].add_command``: the name an attribute/subscript chain starts from."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_literal_text(node: ast.expr | None) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _literal_technique_texts(call: ast.Call) -> list[str]:
    """What ``call`` spells out that must come from the config class (name) or ``registry.toml`` (summary)."""
    func = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)
    keywords = {k.arg: k.value for k in call.keywords}
    if func == "Technique":  # Technique(name, config_class, apply, summary)
        args = {"name": call.args[0] if call.args else keywords.get("name"),
                "summary": call.args[3] if len(call.args) > 3 else keywords.get("summary")}
    elif func == "technique":  # technique(config_class, apply, summary)
        args = {"summary": call.args[2] if len(call.args) > 2 else keywords.get("summary")}
    else:
        return []
    return [f"{func}() with a literal {what}" for what, value in args.items() if _is_literal_text(value)]


def _registration_problems(root: Path) -> list[str]:
    """``"<file>:<line> <problem>"`` for every registration module under ``root`` that names or describes a
    technique with a string literal, or adds commands to a click group other than the hook's ``cli``."""
    found = []
    for f in sorted(root.rglob("registration.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Call):
                continue
            problems = _literal_technique_texts(node)
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in CLICK_ADDERS and _root_name(func.value) != "cli":
                problems.append(f"{_root_name(func.value)}.{func.attr}(): commands go to the cli the hook receives")
            found += [(str(f.relative_to(root)), node.lineno, p) for p in problems]
    return [f"{name}:{line} {problem}" for name, line, problem in sorted(found)]


@pytest.mark.parametrize("pkg", ["slimkit_video", "slimkit_nlp"])
def test_registration_takes_names_from_configs_summaries_from_the_registry_and_commands_to_cli(pkg):
    """``register(technique(Config, apply))`` and commands added to the hook's ``cli`` (CONTRIBUTING.md)."""
    wrong = _registration_problems(PACKAGES[pkg])
    assert not wrong, "register techniques with slimkit.parts.technique(Config, apply) and add commands " \
                      "to register_commands' cli:\n" + "\n".join(wrong)


def test_the_registration_check_finds_literals_and_global_groups(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "registration.py").write_text(
        "def register_techniques(register):\n"
        "    register(slimkit.Technique('x', XConfig, apply, 'does x'))\n"
        "    register(technique(YConfig, apply, summary=f'does {y}'))\n"
        "    register(technique(ZConfig, apply))\n"
        "def register_commands(cli):\n"
        "    from slimkit_nlp.cli import nlp\n"
        "    nlp.add_command(demo, 'demo')\n"
        "    cli.commands['nlp'].add_command(train, 'train')\n"
        "    cli.add_command(hat)\n")
    assert _registration_problems(tmp_path) == [
        "a/registration.py:2 Technique() with a literal name",
        "a/registration.py:2 Technique() with a literal summary",
        "a/registration.py:3 technique() with a literal summary",
        "a/registration.py:7 nlp.add_command(): commands go to the cli the hook receives",
    ]
