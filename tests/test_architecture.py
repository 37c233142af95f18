"""The layout keeps its promises (README "Layout"): data flows one way, the method knows
nothing of the daemon, no module or function grows past what a reader takes in at once.

The import graph is read from the source with :mod:`ast` (every import, also those
inside functions, except those only for type checkers), so a lazy import cannot hide a
dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autodip_watch"
#: Limits of the issue "a house a newcomer enters in ten minutes".
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``name`` imports (at any depth of its code)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" for alias in node.names] + [stem]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]], ignore_parents: bool = True) -> list[str] | None:
    """A cycle of imports, or None. A module's edge to a package that contains it (its
    ``__init__``, always imported first) is not a dependency of the module's own."""
    def edges(name: str) -> set[str]:
        return {t for t in graph[name]
                if not (ignore_parents and name.startswith(t + "."))}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(edges(name)):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    """The check itself can fail: a table of graphs with and without cycles."""
    cases = [
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"p": set(), "p.x": {"p"}, "p.y": {"p.x"}}, None),  # a module and its package
        ({"p": {"p.x"}, "p.x": {"p.y"}, "p.y": {"p.x"}}, ["p.x", "p.y", "p.x"]),
    ]
    for graph, cycle in cases:
        assert find_cycle(graph) == cycle, graph


def test_imports_are_read_from_every_kind_of_import_statement(tmp_path):
    source = tmp_path / "autodip_watch" / "x"
    source.mkdir(parents=True)
    module = source / "m.py"
    module.write_text("import autodip_watch.a\nfrom .. import b\nfrom ..c import d\n"
                      "def f():\n    from .n import thing\n"
                      "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..e import E\n")
    known = {"autodip_watch.a", "autodip_watch.b", "autodip_watch.c", "autodip_watch.c.d",
             "autodip_watch.x.n", "autodip_watch.e", "autodip_watch"}
    found = imports_of("autodip_watch.x.m", module, known)
    assert found == {"autodip_watch.a", "autodip_watch.b", "autodip_watch.c",
                     "autodip_watch.c.d", "autodip_watch.x.n", "autodip_watch"}


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        for target in graph.get(name, ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


# (modules, what they must never reach, directly or through others)
RULES = [
    (("autodip_watch.dip", "autodip_watch.transfer"),
     ("autodip_watch.daemon", "autodip_watch.cli", "autodip_watch.settings",
      "autodip_watch.cluster")),
    (("autodip_watch.daemon.queue", "autodip_watch.daemon.jobs",
      "autodip_watch.daemon.database"),
     ("autodip_watch.dip", "autodip_watch.transfer", "autodip_watch.pipeline",
      "autodip_watch.metadata", "autodip_watch.settings", "autodip_watch.calibration")),
    (("autodip_watch.io", "autodip_watch.metadata", "autodip_watch.pipeline",
      "autodip_watch.settings", "autodip_watch.calibration"),
     ("autodip_watch.daemon", "autodip_watch.cli")),
    (("autodip_watch.daemon",), ("autodip_watch.cli",)),
]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


@pytest.mark.parametrize("sources, forbidden", RULES,
                         ids=[" ".join(s.split(".")[-1] for s in rule[0]) for rule in RULES])
def test_dependencies_point_one_way(graph, sources, forbidden):
    broken = {}
    for name in graph:
        if _under(name, sources):
            bad = sorted(t for t in _reaches(graph, name)
                         if _under(t, forbidden) and not _under(t, sources))
            if bad:
                broken[name] = bad
    assert not broken


def test_no_module_is_too_long():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_too_long():
    long = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{name}.{node.name}"] = lines
    assert not long, f"over {MAX_FUNCTION_LINES} lines: {long}"


def test_tests_share_helpers_through_one_home():
    """Tests import shared code from tests/helpers/ only, never from another test file
    (a test file imported as a library runs its module fixtures' imports twice and hides
    what is shared)."""
    tests = Path(__file__).resolve().parent
    offenders = {}
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [name for name in names if name.split(".")[0].startswith("test_")]
            if bad:
                offenders.setdefault(path.name, []).extend(bad)
    assert not offenders
    assert not [p.name for p in tests.glob("*.py")
                if not p.name.startswith(("test_", "conftest"))], "helpers belong in tests/helpers/"


def test_the_shipped_table_is_package_data():
    """The shipped calibration table lives in the transfer package and is declared as
    its package data, so an installed wheel finds it where a checkout does."""
    import fnmatch
    import tomllib

    from autodip_watch.transfer.table import CalibrationTable, default_table_path

    path = default_table_path()
    assert path.is_file() and path.is_relative_to(PACKAGE / "transfer")
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["autodip_watch.transfer"]
    relative = path.relative_to(PACKAGE / "transfer").as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), patterns
    assert CalibrationTable.load().path == path
