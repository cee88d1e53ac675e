"""The package layering: no import cycles between the packages of ``app``, and no
import deferred into a function to dodge one (static, from the source)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"

# Commands import what only they need (start-up time of check-config); not a cycle.
DEFERRED_IMPORTS_ALLOWED = {"app.cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(APP.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST) -> Iterator[tuple[str, bool]]:
    """(imported app module, deferred into a function?) for every import statement."""

    def walk(node: ast.AST, deferred: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                yield from ((alias.name, deferred) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                yield child.module, deferred
                yield from ((f"{child.module}.{alias.name}", deferred) for alias in child.names)
            else:
                inner = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                yield from walk(child, deferred or inner)

    yield from ((name, deferred) for name, deferred in walk(tree, False) if name.startswith("app"))


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = {_module_name(path): path for path in APP.rglob("*.py")}
    packages: dict[str, set[str]] = {}
    deferred: dict[str, set[str]] = {}
    for name, path in modules.items():
        for imported, is_deferred in _imports(ast.parse(path.read_text())):
            if imported not in modules:
                continue  # a name imported from a module, not a module
            if is_deferred:
                deferred.setdefault(name, set()).add(imported)
            elif _package(imported) != _package(name):
                packages.setdefault(_package(name), set()).add(_package(imported))
    return packages, deferred


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), set()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_two_packages_import_each_other() -> None:
    packages, _ = _graph()
    cycles = sorted(
        (package, other)
        for package, imported in packages.items()
        for other in imported
        if package in _reachable(packages, other)
    )
    assert cycles == []


def test_no_import_is_deferred_into_a_function() -> None:
    _, deferred = _graph()
    assert {name for name in deferred if name not in DEFERRED_IMPORTS_ALLOWED} == set()


def test_the_check_sees_cycles() -> None:
    graph = {"app.a": {"app.b"}, "app.b": {"app.c"}, "app.c": {"app.a"}, "app.d": {"app.a"}}
    assert _reachable(graph, "app.b") >= {"app.a"}
    assert "app.d" not in _reachable(graph, "app.a")
