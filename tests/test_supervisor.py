"""The supervisor: one thread and one registry serve every action running in a process."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from async_actions import service
from async_actions.context import ActionCancelled, ActionContext
from async_actions.lifecycle import claim
from async_actions.models import Action
from async_actions.progress import Publisher
from async_actions.supervisor import _Running, supervisor
from tests.actions import gate
from tests.helpers import wait_for


def _context() -> tuple[ActionContext, Publisher]:
    action, _waits = claim(service.start("tests.echo", session_key="s").action.pk)
    assert action is not None
    publisher = Publisher(action)
    return ActionContext(action, publisher), publisher


@pytest.mark.django_db
def test_cancel_with_a_reason_stops_the_handler_and_keeps_the_first_reason():
    ctx, publisher = _context()
    assert (ctx.cancelled, ctx.cancel_reason) == (False, "")
    ctx.cancel("the upstream job was withdrawn")
    ctx.cancel("a second reason")
    assert ctx.cancelled
    assert ctx.cancel_reason == "the upstream job was withdrawn"
    assert publisher.cancel_requested, "watchers see the request, as with a user's cancel"
    with pytest.raises(ActionCancelled):
        ctx.raise_if_cancelled()


@pytest.mark.django_db
def test_request_cancel_is_a_cancel_without_a_reason_of_its_own():
    ctx, publisher = _context()
    ctx.request_cancel()
    assert (ctx.cancelled, ctx.cancel_reason, publisher.cancel_requested) == (
        True,
        "requested",
        True,
    )


def test_one_supervisor_thread_serves_every_running_action(runner: Any):
    started = [service.start("tests.wait", {"gate": f"sup-{i}"}) for i in range(3)]
    ids = {s.action.pk for s in started}
    wait_for(lambda: ids <= set(supervisor.running_ids()))
    names = [t.name for t in threading.enumerate()]
    assert names.count("async-actions-supervisor") == 1
    assert not [n for n in names if n.startswith("async-actions-monitor")]
    for i in range(3):
        gate(f"sup-{i}").set()
    for pk in ids:
        wait_for(lambda pk=pk: Action.objects.get(pk=pk).status == "succeeded")
    wait_for(lambda: not ids & set(supervisor.running_ids()))


def test_a_user_cancel_reaches_the_handler_with_its_reason(runner: Any):
    started = service.start("tests.wait", {"gate": "sup-cancel"})
    pk = started.action.pk
    ctx = wait_for(lambda: supervisor.local(pk))
    assert service.cancel(pk) is service.OpStatus.OK
    assert ctx.cancel_reason == "requested"
    assert wait_for(lambda: Action.objects.get(pk=pk).status == "cancelled")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("row", "closed", "reason"),
    [
        ({"cancel_requested": True}, False, "requested"),
        ({"status": "succeeded"}, False, "ended from outside"),
        ({"status": "succeeded"}, True, ""),  # its own end: not a cancel
        ({"status": "cancelled", "cancel_requested": True}, True, ""),
        ({}, False, ""),  # still running, nobody asked
    ],
)
def test_the_cancel_poll_stops_only_handlers_asked_or_ended_from_outside(
    row: dict[str, Any], closed: bool, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The poll reads the rows of the actions it serves; one whose handler wrote its
    own end meanwhile is not "asked to cancel" (the Celery runner logged that for
    about one action in twenty)."""
    ctx, publisher = _context()
    Action.objects.filter(pk=ctx.action_id).update(**row)
    if closed:
        publisher.close()
    with caplog.at_level("INFO", logger="async_actions"):
        supervisor._poll_cancels([_Running(ctx, publisher)])
    assert (ctx.cancelled, ctx.cancel_reason) == (bool(reason), reason)
    assert ("asked to cancel" in caplog.text) == bool(reason)
