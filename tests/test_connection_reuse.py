"""Runner threads keep their database connection from one action to the next
(``executor.keep_connection_if_healthy``), but never a transaction a handler left open."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from async_actions import executor
from async_actions.models import Action

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
    assert transaction.get_autocommit()
