"""Every status change is written in ``async_actions.lifecycle`` and nowhere else.

The end of an action used to be written in five places, each a slightly different mix
of conditional UPDATE, push, key release and signal. These tests read the package's
source and fail when a status write, an ``action_finished.send`` or a concurrency key
release appears outside ``lifecycle.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

import async_actions
from async_actions import lifecycle, service
from async_actions.models import Action
from async_actions.progress import Publisher
from async_actions.signals import action_finished

PACKAGE = Path(async_actions.__file__).parent
LIFECYCLE = PACKAGE / "lifecycle.py"


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for an attribute chain, "" for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


#: Hand-written SQL that sets a status: ``UPDATE <table> SET ... status = ...`` (in the
#: SET list, not a WHERE condition).
SQL_STATUS_WRITE = re.compile(
    r"\bUPDATE\b.*?\bSET\b(?:(?!\bWHERE\b).)*?\bstatus\s*=", re.IGNORECASE | re.DOTALL
)


def _text(node: ast.AST) -> str | None:
    """The text of a string literal; an f-string's with ``{}`` for each placeholder."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            part.value if isinstance(part, ast.Constant) else "{}" for part in node.values
        )
    return None


def _transitions(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that change a status or announce the change: ``.update(status=...)``,
    ``.update(**{... "status": ...})``, ``action_finished.send(...)``,
    ``concurrency.release(...)``; and SQL text that updates a status."""
    found = []
    for node in ast.walk(tree):
        text = _text(node)
        if text is not None and SQL_STATUS_WRITE.search(text):
            found.append((node.lineno, "an SQL UPDATE of status"))
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = _dotted(node.func)
        if node.func.attr == "update":
            for kw in node.keywords:
                writes_status = kw.arg == "status" or (
                    kw.arg is None
                    and isinstance(kw.value, ast.Dict)
                    and any(
                        isinstance(k, ast.Constant) and k.value == "status" for k in kw.value.keys
                    )
                )
                if writes_status:
                    found.append((node.lineno, "an UPDATE of status"))
        elif name.endswith("action_finished.send") or name == "action_finished.send":
            found.append((node.lineno, "action_finished.send"))
        elif name == "concurrency.release" or name.endswith(".concurrency.release"):
            found.append((node.lineno, "concurrency.release"))
    return found


def _release_imported(tree: ast.AST) -> bool:
    """Whether ``release`` is imported from the concurrency module by name."""
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module == "async_actions.concurrency"
        and any(alias.name == "release" for alias in node.names)
        for node in ast.walk(tree)
    )


def test_status_changes_and_their_after_steps_live_in_lifecycle_only():
    outside = []
    for path in _modules():
        if path == LIFECYCLE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for line, what in _transitions(tree):
            outside.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
        if _release_imported(tree):
            outside.append(f"{path.relative_to(PACKAGE.parent)}: imports concurrency.release")
    assert outside == [], "write these through async_actions.lifecycle:\n" + "\n".join(outside)


def test_lifecycle_holds_every_kind_of_transition():
    """The scan above is not vacuous: it finds the transitions where they are."""
    kinds = {what for _, what in _transitions(ast.parse(LIFECYCLE.read_text()))}
    assert kinds == {
        "an UPDATE of status",
        "an SQL UPDATE of status",
        "action_finished.send",
        "concurrency.release",
    }


def test_the_scan_sees_a_status_write_in_any_spelling():
    source = (
        "Action.objects.filter(pk=1).update(status='failed')\n"
        "qs.update(**{'status': 'failed'})\n"
        "signals.action_finished.send(sender=None)\n"
        "async_actions.concurrency.release('k')\n"
        "qs.update(cancel_requested=True)\n"
        "cursor.execute(f'UPDATE {table} SET seq = seq + 1, status = %s WHERE id = %s')\n"
        "cursor.execute('update async_actions_action set\\n  status = 1')\n"
        "cursor.execute(f'UPDATE {table} SET task_id = %s WHERE status = %s')\n"
    )
    found = [what for _, what in _transitions(ast.parse(source))]
    assert found == [
        "an UPDATE of status",
        "an UPDATE of status",
        "action_finished.send",
        "concurrency.release",
        "an SQL UPDATE of status",
        "an SQL UPDATE of status",
    ]


@pytest.mark.django_db
def test_of_two_ends_only_the_first_writes_and_signals():
    action, _waits = lifecycle.claim(service.start("tests.echo", session_key="s").action.pk)
    assert action is not None
    publisher = Publisher(action)
    ends: list[str] = []

    def receiver(sender: Any, action: Action, status: str, **kwargs: Any) -> None:
        ends.append(status)

    action_finished.connect(receiver)
    try:
        assert lifecycle.end(action.pk, Action.Status.FAILED, error="stopped by staff")
        # The handler returns late: its result changes nothing, and nothing is announced.
        assert not lifecycle.finish(publisher, Action.Status.SUCCEEDED, response={"late": 1})
        assert not lifecycle.cancel_pending(action.pk)
    finally:
        action_finished.disconnect(receiver)
    row = Action.objects.get(pk=action.pk)
    assert (row.status, row.error, row.response) == ("failed", "stopped by staff", None)
    assert ends == ["failed"]


@pytest.mark.django_db
def test_a_claim_happens_once():
    pk = service.start("tests.echo", session_key="s").action.pk
    first, _ = lifecycle.claim(pk)
    second, waits = lifecycle.claim(pk)
    assert first is not None and first.status == "running" and first.attempt == 1
    assert (second, waits) == (None, False)


def _stored(action: Action) -> dict[str, Any]:
    return {f.attname: getattr(action, f.attname) for f in Action._meta.concrete_fields}


@pytest.mark.django_db
@pytest.mark.parametrize("returning", [True, False], ids=["returning", "sqlite-before-3.35"])
def test_a_claim_returns_the_row_as_stored_without_reading_it_back(
    returning: bool, monkeypatch: pytest.MonkeyPatch
):
    """The claim's UPDATE … RETURNING gives every field as the ORM would read it (and a
    database without RETURNING gets the same row, read after the UPDATE)."""
    monkeypatch.setattr(lifecycle, "_can_return", lambda conn: returning)
    started = service.start("tests.echo", {"word": "é"}, session_key="s", client_address="::1")
    claimed, _ = lifecycle.claim(started.action.pk)
    assert claimed is not None and not claimed._state.adding
    assert _stored(claimed) == _stored(Action.objects.get(pk=claimed.pk))
    assert (claimed.status, claimed.attempt, claimed.seq) == ("running", 1, 1)
    assert claimed.request == {"word": "é"} and claimed.started_at == claimed.heartbeat_at


@pytest.mark.django_db
@pytest.mark.parametrize("end", ["finish", "requeue"])
@pytest.mark.parametrize("returning", [True, False], ids=["returning", "sqlite-before-3.35"])
def test_an_end_hands_the_row_as_written_to_its_receivers(
    end: str, returning: bool, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(lifecycle, "_can_return", lambda conn: returning)
    claimed, _ = lifecycle.claim(service.start("tests.echo", session_key="s").action.pk)
    assert claimed is not None
    publisher = Publisher(claimed)
    publisher.update(40, "almost", {"k": [1, 2]})
    seen: list[Action] = []

    def receiver(sender: Any, action: Action, status: str, **kwargs: Any) -> None:
        seen.append(action)

    action_finished.connect(receiver)
    try:
        if end == "finish":
            assert lifecycle.finish(publisher, "succeeded", response={"r": 1}, action=claimed)
        else:
            assert lifecycle.requeue(publisher, run_after=None, note="again")
    finally:
        action_finished.disconnect(receiver)
    row = Action.objects.get(pk=claimed.pk)
    if end == "finish":
        assert seen == [claimed]  # the caller's object, given the written fields
        assert _stored(claimed) == _stored(row)
        assert (row.status, row.response, row.data, row.percent) == (
            "succeeded",
            {"r": 1},
            {"k": [1, 2]},
            100.0,
        )
    else:
        assert seen == []
        assert (row.status, row.percent, row.data, row.log[-1]["message"]) == (
            "pending",
            0.0,
            None,
            "again",
        )
