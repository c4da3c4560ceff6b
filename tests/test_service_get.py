"""``service.get`` / ``service.aget``: an action's state, read from code."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from async_actions import service
from async_actions.models import Action
from async_actions.state import ActionState
from tests.actions import gate
from tests.helpers import wait_finished, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_get_of_a_succeeded_action_has_its_response(runner: Any):
    started = service.start("tests.echo", {"n": 1})
    wait_finished(started.action.pk)
    state = service.get(started.action.pk)
    assert isinstance(state, ActionState)
    assert (state.status, state.response, state.percent) == ("succeeded", {"echo": {"n": 1}}, 100.0)
    assert state.finished and state.succeeded and not state.failed and not state.cancelled
    assert state.id == started.action.pk and state.handler == "tests.echo"
    assert state.finished_at is not None


def test_get_of_a_failed_action_has_the_users_error_not_the_traceback(runner: Any):
    started = service.start("tests.user_error")
    wait_finished(started.action.pk)
    state = service.get(str(started.action.pk))  # the id as text works too
    assert state is not None and state.failed
    assert state.error == "Row 3 is not a number"
    assert state.response is None
    assert not hasattr(state, "traceback")


def test_get_takes_the_action_itself(runner: Any):
    action = Action.objects.create(handler="tests.echo")
    state = service.get(action)
    assert state is not None and state.status == "pending" and not state.finished


def test_get_of_a_running_action_shows_the_handlers_live_progress(runner: Any):
    gate("get-live").clear()
    started = service.start("tests.wait", {"gate": "get-live"})
    state = wait_for(lambda: (s := service.get(started.action.pk)) and s.percent == 10 and s)
    assert (state.status, state.message) == ("running", "waiting")
    assert service.cancel(started.action.pk) is service.OpStatus.OK
    assert service.get(started.action.pk).cancel_requested is True
    assert wait_finished(started.action.pk).status == "cancelled"
    assert service.get(started.action.pk).cancelled


@pytest.mark.parametrize("missing", [uuid.uuid4(), "not-a-uuid", None, 42])
def test_get_of_no_such_action_is_none(missing: Any):
    assert service.get(missing) is None


def test_state_is_frozen_and_detached_from_the_row():
    action = Action.objects.create(handler="tests.echo")
    state = service.get(action.pk)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.status = "succeeded"  # type: ignore[misc]
    Action.objects.filter(pk=action.pk).update(status="cancelled")
    assert state.status == "pending"
    assert service.get(action.pk).status == "cancelled"


async def test_aget_is_get_for_async_code(runner: Any):
    from asgiref.sync import sync_to_async

    action = await sync_to_async(Action.objects.create)(
        handler="tests.echo", status="failed", error="x"
    )
    state = await service.aget(action.pk)
    assert state is not None and (state.status, state.error) == ("failed", "x")
    assert await service.aget(uuid.uuid4()) is None


def test_json_key_order_is_what_docs_basics_says_for_the_database():
    """PostgreSQL's jsonb keeps no key order (shorter keys first); SQLite keeps it."""
    from django.db import connection

    action = Action.objects.create(
        handler="tests.echo", response={"zebra": 1, "ant": 2}, data={"bb": 1, "a": 2}
    )
    stored = Action.objects.get(pk=action.pk)
    if connection.vendor == "postgresql":
        assert (list(stored.response), list(stored.data)) == (["ant", "zebra"], ["a", "bb"])
    else:
        assert (list(stored.response), list(stored.data)) == (["zebra", "ant"], ["bb", "a"])
    assert service.get(action).response == {"zebra": 1, "ant": 2}  # equal as dicts, always
