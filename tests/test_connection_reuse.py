"""Runner threads keep their database connection from one action to the next
(``executor.keep_connection_if_healthy``), but never a transaction a handler left open."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connections, transaction

from async_actions import executor, service
from async_actions.models import Action
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_transaction_a_handler_left_open_is_not_the_next_actions(
    temporary_handler: Any,
) -> None:
    """One handler leaves its transaction open; its own end and the next action on the
    same thread are still committed (seen from another connection's point of view:
    the rows, read after the thread's connection is closed)."""

    @temporary_handler("tests.leaky")
    def leaky(ctx: Any) -> None:
        transaction.set_autocommit(False)
        Action.objects.count()

    @temporary_handler("tests.after_leaky")
    def fine(ctx: Any) -> str:
        return "ok"

    first = Action.objects.create(handler="tests.leaky")
    second = Action.objects.create(handler="tests.after_leaky")
    executor.execute(first.pk)
    executor.execute(second.pk)
    executor.keep_connection_if_healthy()  # what the thread's next claim does first
    statuses = dict(Action.objects.values_list("handler", "status"))
    assert statuses["tests.after_leaky"] == "succeeded"
    assert statuses["tests.leaky"] == "failed"
    assert transaction.get_autocommit()


@pytest.fixture
def leaks(temporary_handler: Any) -> dict[str, str]:
    """Handlers that leave a transaction open, each after writing a user ``name``."""

    @temporary_handler("tests.leak_autocommit")
    def autocommit_off(ctx: Any) -> str:
        transaction.set_autocommit(False)
        get_user_model().objects.create(username="leak_autocommit")
        return "done"

    @temporary_handler("tests.leak_atomic")
    def atomic_entered(ctx: Any) -> str:
        transaction.atomic().__enter__()
        get_user_model().objects.create(username="leak_atomic")
        return "done"

    @temporary_handler("tests.leak_nested")
    def nested(ctx: Any) -> str:
        with transaction.atomic():
            transaction.atomic().__enter__()
            transaction.atomic().__enter__()
            get_user_model().objects.create(username="leak_nested")
        return "done"

    @temporary_handler("tests.leak_after_raising")
    def raising(ctx: Any) -> str:
        transaction.atomic().__enter__()
        get_user_model().objects.create(username="leak_after_raising")
        raise ValueError("its own error")

    return {
        "tests.leak_autocommit": "leak_autocommit",
        "tests.leak_atomic": "leak_atomic",
        "tests.leak_nested": "leak_nested",
        "tests.leak_after_raising": "leak_after_raising",
    }


@pytest.mark.parametrize(
    "name",
    ["tests.leak_autocommit", "tests.leak_atomic", "tests.leak_nested", "tests.leak_after_raising"],
)
def test_a_transaction_left_open_fails_the_action_and_rolls_back_what_it_wrote(
    leaks: dict[str, str], name: str
) -> None:
    action = Action.objects.create(handler=name)
    status = executor.execute(action.pk)
    connection = connections["default"]
    assert (connection.in_atomic_block, connection.get_autocommit()) == (False, True)
    action.refresh_from_db()
    assert status == action.status == "failed"
    if name == "tests.leak_after_raising":
        assert "its own error" in action.traceback  # the handler's failure is kept
        assert action.error == executor.UNEXPECTED_ERROR
    else:
        assert "left a database transaction open" in action.error
    assert not get_user_model().objects.filter(username=leaks[name]).exists()
    after = Action.objects.create(handler="tests.echo")
    assert executor.execute(after.pk) == "succeeded"


def test_a_transaction_the_caller_opened_is_not_the_handlers(temporary_handler: Any) -> None:
    """Run inline inside the caller's atomic(): the caller's transaction stays open and
    the action succeeds; only what the handler opens counts."""

    @temporary_handler("tests.tidy")
    def tidy(ctx: Any) -> str:
        with transaction.atomic():
            get_user_model().objects.create(username="tidy")
        return "ok"

    action = Action.objects.create(handler="tests.tidy")
    with transaction.atomic():
        assert executor.execute(action.pk) == "succeeded"
        assert connections["default"].in_atomic_block
    assert get_user_model().objects.filter(username="tidy").exists()


def test_a_runner_thread_left_in_a_transaction_does_not_stop_other_writers(
    leaks: dict[str, str], runner: Any
) -> None:
    """On SQLite the leaked transaction would hold the database's write lock: the
    runner's next action and a write of this thread both go through."""
    leaked = service.start("tests.leak_atomic").action
    wait_for(lambda: Action.objects.get(pk=leaked.pk).status == "failed")
    get_user_model().objects.create(username="another_writer")
    fine = service.start("tests.echo").action
    wait_for(lambda: Action.objects.get(pk=fine.pk).status == "succeeded")
    assert not get_user_model().objects.filter(username="leak_atomic").exists()
