"""The wire format: one ``snapshot()`` for the stored row and the running publisher."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import pytest

from async_actions import events, lifecycle, progress, push
from async_actions.models import Action
from async_actions.progress import Publisher
from tests.helpers import running_action

pytestmark = pytest.mark.django_db


def test_group_name_is_the_hex_of_the_id_whatever_its_spelling() -> None:
    action_id = uuid4()
    assert events.group_name(action_id) == f"async_actions.{action_id.hex}"
    assert events.group_name(str(action_id).upper()) == events.group_name(action_id)


def test_an_event_carries_its_route_and_the_snapshot_as_text_once() -> None:
    state = {"id": str(uuid4()), "seq": 7, "status": "running", "percent": 1.5}
    event = events.event_for(state)
    assert event["type"] == events.EVENT_TYPE == "action.update"
    assert event["group"] == events.group_name(state["id"])
    assert (event["seq"], event["status"]) == (7, "running")
    assert json.loads(event["text"]) == {"type": "update", "action": state}
    assert events.event_for(state, "g")["group"] == "g"


@pytest.mark.usefixtures("recording")
def test_the_publisher_and_the_row_make_the_same_snapshot_whilerunning_action() -> None:
    action, publisher = running_action()
    publisher.update(40, "halfway", {"rows": 4})
    publisher.flush_due(float("inf"))  # written
    action.refresh_from_db()
    assert publisher.snapshot() == action.snapshot()
    assert set(action.snapshot()) == {
        "id", "handler", "status", "percent", "message", "data", "seq", "attempt",
        "error", "cancel_requested", "created_at", "started_at", "finished_at",
    }  # fmt: skip


@pytest.mark.usefixtures("recording")
@pytest.mark.parametrize(
    ("status", "error", "shown"),
    [("succeeded", "", ""), ("failed", "boom", "boom"), ("cancelled", "why", "")],
)
def test_the_pushed_end_is_the_stored_end(
    monkeypatch: pytest.MonkeyPatch, status: str, error: str, shown: str
) -> None:
    """The snapshot pushed at the end equals the row's afterwards, ``error`` included
    (shown for a failure only, both ways)."""
    action, publisher = running_action()
    publisher.update(60, "last step")
    pushed: list[dict[str, Any]] = []
    monkeypatch.setattr(push.pusher, "push", lambda pk, snapshot: pushed.append(snapshot))
    assert lifecycle.finish(publisher, status, error=error, action=action)
    row = Action.objects.get(pk=action.pk)
    assert pushed == [row.snapshot()]
    assert pushed[0]["status"] == status
    assert pushed[0]["error"] == shown


@pytest.mark.usefixtures("recording")  # the next attempt is not run
def test_the_requeued_state_pushed_is_the_stored_one(monkeypatch: pytest.MonkeyPatch) -> None:
    action, publisher = running_action()
    pushed: list[dict[str, Any]] = []
    monkeypatch.setattr(push.pusher, "push", lambda pk, snapshot: pushed.append(snapshot))
    assert lifecycle.requeue(publisher, run_after=None, note="again")
    assert pushed == [Action.objects.get(pk=action.pk).snapshot()]


def test_the_old_import_paths_in_progress_keep_working() -> None:
    assert progress.group_name is events.group_name
    assert progress.event_for is events.event_for
    assert progress.EVENT_TYPE == events.EVENT_TYPE
    assert progress.pusher is push.pusher
    assert progress.layer_call is push.layer_call
    assert progress.push_action is push.push_action
    assert progress.Publisher is Publisher
