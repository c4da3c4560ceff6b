"""The Python samples of README.md and docs/*.md import what they use, and the complete
ones run.

The convention (also in docs/README.md, "Code samples"):

- a block fenced ```` ```python ```` claims to be complete: it is executed here, as a
  module of its own, in the configured test project (database and a fresh runner
  available). Handlers and views it defines are registered for the run and removed
  after it, so samples never leak into other tests.
- a block fenced ```` ```python fragment ```` is a piece of a file (settings, urls.py)
  or uses names of the reader's project (``request``, their models). It must still be
  valid Python, and every name of ``async_actions`` it uses must be imported in it:
  the samples once used ``ActionError`` with no import line, and readers guessed wrong.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from async_actions import handlers

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)

#: Modules whose public names a sample must import when it uses them.
PUBLIC_MODULES = [
    "async_actions.service",
    "async_actions.handlers",
    "async_actions.context",
    "async_actions.exceptions",
    "async_actions.views",
    "async_actions.state",
    "async_actions.signals",
    "async_actions.testing",
]


def samples() -> list[Any]:
    found = []
    for path in FILES:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 2  # the first line of code
            fragment = "fragment" in match.group(1).split()
            found.append(
                pytest.param(
                    match.group(2),
                    fragment,
                    id=f"{path.relative_to(ROOT)}:{line}{'-fragment' if fragment else ''}",
                )
            )
    return found


SAMPLES = samples()
COMPLETE = [p for p in SAMPLES if not p.values[1]]


def public_names() -> set[str]:
    names = {"async_actions"} | {m.rsplit(".", 1)[1] for m in PUBLIC_MODULES}
    for module in PUBLIC_MODULES:
        names.update(getattr(importlib.import_module(module), "__all__", ()))
    return names


def parse(source: str) -> ast.Module:
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT  # async samples show `await`
    tree = compile(source, "<sample>", "exec", flags=flags, dont_inherit=True)
    assert isinstance(tree, ast.Module)
    return tree


def unbound_names(tree: ast.Module) -> set[str]:
    """Names the sample reads that nothing in it binds (imports, assignments, defs,
    parameters) and that are no builtins: they must come from somewhere else."""
    bound: set[str] = set()
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return used - bound - set(dir(builtins))


def test_the_docs_have_samples_of_both_kinds():
    assert len(COMPLETE) >= 8
    assert len(SAMPLES) > len(COMPLETE)


@pytest.mark.parametrize(("source", "fragment"), SAMPLES)
def test_every_sample_imports_what_it_uses_from_async_actions(source: str, fragment: bool):
    missing = unbound_names(parse(source)) & public_names()
    assert not missing, f"the sample uses {sorted(missing)} without importing them"


@pytest.mark.parametrize(("source", "fragment"), COMPLETE)
@pytest.mark.django_db(transaction=True)
def test_every_complete_sample_runs(source: str, fragment: bool, runner: Any, request: Any):
    name = "doc_sample_" + re.sub(r"\W", "_", request.node.callspec.id)
    module = types.ModuleType(name)
    before = set(handlers.registered_handlers())
    sys.modules[name] = module  # views and perform() look their module up by name
    try:
        exec(compile(source, f"<{request.node.callspec.id}>", "exec"), module.__dict__)
    finally:
        for added in set(handlers.registered_handlers()) - before:
            handlers.unregister(added)
        del sys.modules[name]


def test_the_documented_exception_path_names_the_classes_of_the_old_paths():
    from async_actions import context, exceptions, executor, loop, payloads, progress

    assert context.ActionError is exceptions.ActionError
    assert context.ActionCancelled is exceptions.ActionCancelled
    assert executor.ActionError is exceptions.ActionError
    assert payloads.PayloadError is exceptions.PayloadError
    assert progress.ProgressError is exceptions.ProgressError
    assert loop.EscapedBaseException is exceptions.EscapedBaseException
    assert {"ActionError", "ActionCancelled"} <= set(exceptions.__all__)
