"""``async def`` handlers: awaited on the runner's one event loop, same ActionContext."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from async_actions import service
from async_actions.loop import action_loop
from async_actions.models import Action
from tests import capability_actions as caps
from tests.actions import gate, gates
from tests.helpers import wait_finished, wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    caps.events.clear()
    gates.clear()
    yield
    for event in gates.values():
        event.set()


def test_async_function_handler_reports_progress_and_stores_its_result(runner):
    result = service.start("caps.async_steps", {"steps": 4})
    action = wait_finished(result.action.pk)
    assert action.status == "succeeded"
    assert action.response == {"steps": 4}
    assert action.percent == 100.0
    assert action.message == "step 4"
    ((_, _, saw_own_context),) = [e for e in caps.events if e[0] == "async_thread"]
    assert saw_own_context, "current() inside an async handler must return its context"


def test_async_handle_method_on_a_handler_class_is_awaited(runner):
    result = service.start("caps.async_class", {"x": 7})
    action = wait_finished(result.action.pk)
    assert (action.status, action.response) == ("succeeded", 21)


def test_sync_handle_returning_a_coroutine_like_an_async_view_run_is_awaited(runner):
    result = service.start("caps.view_like")
    action = wait_finished(result.action.pk)
    assert (action.status, action.response) == ("succeeded", "ran")


def test_every_async_handler_runs_on_one_long_lived_loop_thread(runner):
    first = service.start("caps.async_steps", {"steps": 1})
    wait_finished(first.action.pk)
    second = service.start("caps.async_steps", {"steps": 1})
    wait_finished(second.action.pk)
    threads = {e[1] for e in caps.events if e[0] == "async_thread"}
    assert len(threads) == 1
    assert threads == {action_loop._thread.ident}
    assert action_loop._thread.name == "async-actions-loop"


def test_cancel_reaches_an_async_handler_as_cancelled_error_at_its_next_await(runner):
    result = service.start("caps.async_wait", {"gate": "never"})
    pk = result.action.pk
    wait_for(lambda: Action.objects.get(pk=pk).status == "running")
    assert service.cancel(pk) is service.OpStatus.OK
    action = wait_finished(pk)
    assert action.status == "cancelled"
    assert ("cancelled_error", str(pk)) in caps.events


def test_async_handler_can_use_the_orm_through_sync_to_async(runner):
    result = service.start("caps.async_db")
    action = wait_finished(result.action.pk)
    assert action.status == "succeeded", action.traceback
    assert action.response == {"status_seen": "running", "handler": "caps.async_db"}


def test_action_error_from_an_async_handler_fails_with_its_message(runner):
    result = service.start("caps.async_user_error")
    action = wait_finished(result.action.pk)
    assert (action.status, action.error) == ("failed", "The file has no header row")
    assert "ActionError" in action.traceback


def test_sync_and_async_handlers_run_side_by_side(runner):
    gate("mix").clear()
    waiting = service.start("caps.async_wait", {"gate": "mix"})
    blocked_sync = service.start("tests.wait", {"gate": "mix"})
    others = [
        service.start(name, request)
        for name, request in [
            ("caps.async_steps", {"steps": 3}),
            ("tests.echo", {"n": 1}),
            ("caps.async_class", {"x": 1}),
        ]
    ]
    # While an async handler awaits and a sync one blocks, the rest still finish.
    for started in others:
        assert wait_finished(started.action.pk).status == "succeeded"
    gate("mix").set()
    for started in (waiting, blocked_sync):
        assert wait_finished(started.action.pk).status == "succeeded"


def test_an_async_handler_never_blocks_the_loop_on_progress_writes(runner, monkeypatch):
    from async_actions.progress import Publisher

    write_threads: set[str] = set()
    original = Publisher._write

    def spy(self: Publisher) -> None:
        write_threads.add(threading.current_thread().name)
        original(self)

    monkeypatch.setattr(Publisher, "_write", spy)
    result = service.start("caps.async_steps", {"steps": 200})
    action = wait_finished(result.action.pk)
    assert action.status == "succeeded", action.traceback
    assert "async-actions-loop" not in write_threads
