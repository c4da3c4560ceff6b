"""The package's import graph: one-way, and loaded at import time, not inside functions.

import-linter's layers contract (``make lint``) holds the order between layers; these
tests hold what it does not see: cycles among modules of one layer, and imports hidden
in function bodies, which is how cycles hid before (issue 16).
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "async_actions"

#: The only functions that may import: each runs once the app registry is ready and
#: loads modules that need it (models), so they cannot import at module level.
APP_REGISTRY_GUARDS = {
    ("apps.py", "AsyncActionsConfig.ready"),
    ("__init__.py", "startup"),
    # pytest loads plugins before pytest-django sets Django up.
    ("testing/pytest.py", "actions_inline"),
    ("testing/pytest.py", "actions_captured"),
    ("testing/pytest.py", "actions_threaded"),
}


def _function_imports(source: str) -> list[tuple[str, int]]:
    """(qualified function name, line) of every import inside a function body."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, scope: list[str], in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                found.append((".".join(scope), child.lineno))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, [*scope, child.name], True)
            elif isinstance(child, ast.ClassDef):
                visit(child, [*scope, child.name], in_function)
            else:
                visit(child, scope, in_function)

    visit(ast.parse(source), [], False)
    return found


def _package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def test_functions_import_nothing_except_the_app_registry_guards() -> None:
    offenders = []
    for path in _package_modules():
        relative = path.relative_to(PACKAGE).as_posix()
        for function, line in _function_imports(path.read_text()):
            if (relative, function) not in APP_REGISTRY_GUARDS:
                offenders.append(f"async_actions/{relative}:{line} in {function}()")
    assert offenders == [], "imports inside functions (move them to the top):\n" + "\n".join(
        offenders
    )


def test_the_scan_finds_imports_in_methods_nested_functions_and_branches() -> None:
    source = (
        "import os\n"
        "class A:\n"
        "    def m(self):\n"
        "        if True:\n"
        "            from x import y\n"
        "def f():\n"
        "    def g():\n"
        "        import z\n"
        "    try:\n"
        "        import w\n"
        "    except ImportError:\n"
        "        pass\n"
    )
    assert _function_imports(source) == [("A.m", 5), ("f.g", 8), ("f", 10)]


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Every module that sits on a cycle, with the cycle found from it (iterative DFS)."""
    cycles = []
    for start in sorted(modules):
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            module, path = stack.pop()
            for imported in graph.find_modules_directly_imported_by(module):
                if imported == start:
                    cycles.append([*path, start])
                    stack.clear()
                    break
                if imported in modules and imported not in seen:
                    seen.add(imported)
                    stack.append((imported, [*path, imported]))
    return cycles


def test_no_module_of_the_package_imports_itself_back() -> None:
    graph = grimp.build_graph("async_actions", exclude_type_checking_imports=True)
    modules = {m for m in graph.modules if ".migrations" not in m}
    assert _cycles(graph, modules) == []


@pytest.mark.parametrize(
    "edges", [[("a.x", "a.y"), ("a.y", "a.x")], [("a.x", "a.y"), ("a.y", "a.z"), ("a.z", "a.x")]]
)
def test_the_cycle_search_finds_two_and_three_module_cycles(edges: list[tuple[str, str]]) -> None:
    graph = grimp.ImportGraph()
    for importer, imported in edges:
        graph.add_import(importer=importer, imported=imported)
    assert _cycles(graph, {m for m in graph.modules}) != []
