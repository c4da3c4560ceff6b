"""Handlers that do their work inside ``transaction.atomic()``.

Progress reported inside the handler's open transaction must show on every surface
(WebSocket, status JSON, API, admin) before the transaction commits, on SQLite (where
the transaction holds the database's only write lock) and on PostgreSQL; and the
transaction must not stall the monitor thread that serves every other action.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection, transaction
from django.test import Client
from django.urls import include, path, reverse
from rest_framework.test import APIClient

from async_actions import service
from async_actions.context import ActionContext, ActionError
from async_actions.handlers import handler
from async_actions.models import Action
from async_actions.service import OpStatus
from async_actions.views import BaseAsyncView
from example_project.asgi import application
from tests.helpers import wait_for
from tests.urls import urlpatterns as test_urlpatterns

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls(__name__)]

#: The handler waits on these; the test sets them (no sleeps on either side).
steps: dict[str, threading.Event] = {}
HOLD = 30  # seconds a handler waits for the test before giving up (a failing test)


def step(name: str) -> threading.Event:
    return steps.setdefault(name, threading.Event())


@pytest.fixture(autouse=True)
def _release_handlers() -> Iterator[None]:
    steps.clear()
    yield
    for event in list(steps.values()):
        event.set()


class AtomicView(BaseAsyncView):
    """Reports progress from inside an open transaction, holding it until released."""

    def run(self, ctx: ActionContext, data: Any) -> Any:
        with transaction.atomic():
            Group.objects.create(name=data["group"])  # the transaction has written
            step("opened").set()
            if not step("go").wait(HOLD):
                raise ActionError("the test never said go")
            ctx.set_progress(40, "inside the transaction", {"rows": 1})
            step("reported").set()
            if not step("release").wait(HOLD):
                raise ActionError("the test never released the transaction")
        return {"committed": data["group"]}


urlpatterns = [*test_urlpatterns, path("t/atomic/", include(AtomicView.urls()))]


@handler("tests.atomic.hold", public=False)
def hold_transaction(ctx: ActionContext) -> Any:
    """Holds a write transaction open (on SQLite: the write lock) until released."""
    if not step("begin").wait(HOLD):
        raise ActionError("never told to begin")
    with transaction.atomic():
        Group.objects.create(name="held")
        ctx.set_progress(30, "holding")
        step("holding").set()
        if not step("release-hold").wait(HOLD):
            raise ActionError("never released")
    return "released"


@handler("tests.atomic.limited", public=False, time_limit=1.0)
def limited(ctx: ActionContext) -> Any:
    """Waits to be told to stop; its time limit is what tells it."""
    if ctx.wait_cancelled(HOLD):
        step("limit-fired").set()
    ctx.raise_if_cancelled()
    return "not stopped"


@handler("tests.atomic.rollback", public=False)
def roll_back(ctx: ActionContext) -> Any:
    try:
        with transaction.atomic():
            Group.objects.create(name="undone")
            ctx.set_progress(40, "before the rollback")
            raise ValueError("undo the work")
    except ValueError:
        pass
    step("rolled-back").set()
    if not step("release").wait(HOLD):
        raise ActionError("never released")
    return "done"


@handler("tests.atomic.idle", public=False)
def idle(ctx: ActionContext) -> Any:
    step("idle").set()
    if not step("release").wait(HOLD):
        raise ActionError("never released")
    return "done"


@pytest.fixture
def boss(transactional_db: None) -> Any:
    return get_user_model().objects.create_superuser("boss", "boss@example.com", "pw")


def session_for(user: Any) -> str:
    store = SessionStore()
    store["_auth_user_id"] = str(user.pk)
    store["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    store["_auth_user_hash"] = user.get_session_auth_hash()
    store.save()
    return str(store.session_key)


def socket(pk: Any, session_key: str) -> WebsocketCommunicator:
    headers = [
        (b"origin", b"http://testserver"),
        (b"host", b"testserver"),
        (b"cookie", f"sessionid={session_key}".encode()),
    ]
    return WebsocketCommunicator(application, f"/ws/async-actions/{pk}/", headers=headers)


async def _watch_progress_reach_sockets(pk: Any, session_key: str) -> dict[str, Any]:
    """A tab open before the report receives the push; one opened after starts at it."""
    early = socket(pk, session_key)
    connected, _ = await early.connect(10)
    assert connected
    first = await early.receive_json_from(10)
    assert first["action"]["status"] == "running"
    assert first["action"]["percent"] != 40
    step("go").set()
    await sync_to_async(step("reported").wait, thread_sensitive=False)(HOLD)
    while True:
        pushed = (await early.receive_json_from(10))["action"]
        if pushed["percent"] == 40:
            break
    late = socket(pk, session_key)
    connected, _ = await late.connect(10)
    assert connected
    snapshot = (await late.receive_json_from(10))["action"]
    await early.disconnect()
    await late.disconnect()
    return {"pushed": pushed, "snapshot": snapshot}


def assert_live(state: dict[str, Any]) -> None:
    assert state["status"] == "running"
    assert state["percent"] == 40
    assert state["message"] == "inside the transaction"
    assert state["data"] == {"rows": 1}


def test_progress_inside_an_open_transaction_shows_on_every_surface(runner: Any, boss: Any):
    # Every write the test needs is done first: on SQLite the open transaction will
    # hold the only write lock.
    page = Client()
    page.force_login(boss)
    session_key = session_for(boss)
    api = APIClient()
    api.force_authenticate(boss)
    started = service.start(AtomicView.handler_name(), {"group": "g40"}, user=boss)
    assert started.ok
    pk = started.action.pk
    assert step("opened").wait(HOLD)

    sockets = async_to_sync(_watch_progress_reach_sockets)(pk, session_key)
    assert_live(sockets["pushed"])
    assert_live(sockets["snapshot"])

    status = page.get(reverse("atomic_view:status", kwargs={"pk": pk}))
    assert status.status_code == 200
    assert_live(status.json())

    admin_status = page.get(reverse("admin:async_actions_action_status", args=[pk]))
    assert_live(admin_status.json())
    change = page.get(reverse("admin:async_actions_action_change", args=[pk])).content.decode()
    assert "inside the transaction" in change
    assert "40 %" in change  # the admin shows whole percent
    listing = page.get(reverse("admin:async_actions_action_changelist")).content.decode()
    assert 'aria-valuenow="40"' in listing

    retrieved = api.get(f"/api/actions/{pk}/")
    assert retrieved.status_code == 200
    assert_live(retrieved.json())
    listed = api.get("/api/actions/", {"status": "running"}).json()["results"]
    assert [row["percent"] for row in listed if row["id"] == str(pk)] == [40]

    if connection.vendor != "sqlite":
        # Written on the monitor's own connection, so other processes see it as well.
        # (SQLite cannot: the handler's transaction holds its only write lock.)
        wait_for(lambda: Action.objects.filter(pk=pk, percent=40).exists())

    # All of that while the handler's transaction is still open: its row is not visible.
    assert not Group.objects.filter(name="g40").exists()
    assert Action.objects.get(pk=pk).status == "running"

    step("release").set()
    final = wait_for(lambda: Action.objects.filter(pk=pk).finished().first())
    assert final.status == "succeeded"
    assert final.percent == 100
    assert final.message == "inside the transaction"
    assert final.data == {"rows": 1}
    assert final.response == {"committed": "g40"}
    assert Group.objects.filter(name="g40").exists()
    done = page.get(reverse("atomic_view:status", kwargs={"pk": pk})).json()
    assert done["status"] == "succeeded"
    assert done["seq"] == final.seq


def test_progress_reported_in_a_transaction_that_rolls_back_is_still_stored(runner: Any):
    """Progress is not written into the handler's transaction, so it is not undone with it."""
    started = service.start("tests.atomic.rollback")
    assert step("rolled-back").wait(HOLD)
    stored = wait_for(lambda: Action.objects.filter(pk=started.action.pk, percent=40).first())
    assert stored.message == "before the rollback"
    assert stored.status == "running"
    assert not Group.objects.filter(name="undone").exists()
    step("release").set()
    final = wait_for(lambda: Action.objects.filter(pk=started.action.pk).finished().first())
    assert (final.status, final.message) == ("succeeded", "before the rollback")


def test_progress_reported_from_outside_the_handler_is_not_written_into_the_callers_transaction(
    runner: Any,
):
    """``service.update_progress`` from code in a transaction (a request, say) that then
    rolls back: the report is stored all the same."""
    started = service.start("tests.atomic.idle")
    assert step("idle").wait(HOLD)
    with contextlib.suppress(ValueError), transaction.atomic():
        assert service.update_progress(started.action.pk, 55, "from a request") is OpStatus.OK
        raise ValueError("the request fails and rolls back")
    stored = wait_for(lambda: Action.objects.filter(pk=started.action.pk, percent=55).first())
    assert stored.message == "from a request"
    step("release").set()
    wait_for(lambda: Action.objects.get(pk=started.action.pk).is_finished)


def test_an_open_transaction_does_not_stall_other_actions_time_limits(runner: Any):
    """The monitor thread serves every action; a handler's transaction must not hold it.

    On SQLite a write waits up to the busy timeout (20 s in the test settings) for the
    transaction's lock; on PostgreSQL a write to a row the transaction locked waits for
    its commit. The limit below is 1 s; 5 s is far under either wait.
    """
    holder = service.start("tests.atomic.hold")
    limited_action = service.start("tests.atomic.limited")  # both started before the lock
    wait_for(lambda: Action.objects.filter(status="running").count() == 2)
    step("begin").set()
    assert step("holding").wait(HOLD)
    assert not step("limit-fired").is_set()
    assert step("limit-fired").wait(5), "the time limit did not fire while a transaction was open"
    assert not Group.objects.filter(name="held").exists()  # still open
    step("release-hold").set()
    assert wait_for(lambda: Action.objects.get(pk=holder.action.pk).is_finished)
    final = wait_for(lambda: Action.objects.filter(pk=limited_action.action.pk).finished().first())
    assert final.status == "failed"
    assert final.error.startswith("Time limit exceeded")
    assert Action.objects.get(pk=holder.action.pk).status == "succeeded"


def test_a_lock_held_outside_the_handlers_does_not_stall_the_monitor(runner: Any):
    """Another process's transaction (here: the test's own connection) holds the lock the
    heartbeat needs; the monitor gives up on it after ``LOCK_WAIT`` and keeps serving."""
    limited_action = service.start("tests.atomic.limited")
    pk = limited_action.action.pk
    wait_for(lambda: Action.objects.filter(pk=pk, status="running").exists())
    with transaction.atomic():
        # SQLite: the write lock (IMMEDIATE); PostgreSQL: the lock on the action's row.
        Action.objects.select_for_update().filter(pk=pk).update(message="locked by the test")
        assert step("limit-fired").wait(5), "the time limit did not fire while a lock was held"
    final = wait_for(lambda: Action.objects.filter(pk=pk).finished().first())
    assert final.status == "failed"
    assert final.error.startswith("Time limit exceeded")
