"""Progress of every action running in a process is written by one thread, together.

The supervisor writes the due progress of all running actions in one transaction per
interval (``progress.store_progress``) instead of each handler thread writing its own
row: with a hundred handlers on SQLite those writes queued on the database's single
write lock and the handlers fell behind (docs/performance.md, "Fan-out").
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from async_actions import lifecycle, progress, service
from async_actions.models import Action
from async_actions.progress import Publisher, store_progress
from tests.actions import gate
from tests.helpers import running_action, wait_finished, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _running(count: int) -> list[tuple[Action, Publisher]]:
    made = [running_action() for _ in range(count)]
    for _action, publisher in made:
        publisher.inline_writes = False  # as under the supervisor: updates only hold
    return made


def _updates(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]


@pytest.mark.usefixtures("recording")
def test_one_call_writes_every_due_action_and_nothing_before_the_next_interval() -> None:
    made = _running(3)
    for i, (_action, publisher) in enumerate(made):
        publisher.update(10 * (i + 1), f"step {i}", {"i": i})
    with CaptureQueriesContext(connection) as queries:
        store_progress([publisher for _action, publisher in made], time.monotonic())
    assert len(_updates(queries)) == 3
    for i, (action, publisher) in enumerate(made):
        row = Action.objects.get(pk=action.pk)
        assert (row.percent, row.message, row.data) == (10 * (i + 1), f"step {i}", {"i": i})
        assert row.seq == action.seq + 1
        assert publisher.writes == 1
    for _action, publisher in made:
        publisher.update(99, "again")
    with CaptureQueriesContext(connection) as queries:
        store_progress([publisher for _action, publisher in made], time.monotonic())
    assert _updates(queries) == []  # PROGRESS_DB_INTERVAL has not passed


@pytest.mark.usefixtures("recording")
def test_an_action_whose_end_is_being_written_is_left_to_that_write() -> None:
    (ending, ending_pub), (other, other_pub) = _running(2)
    ending_pub.update(40, "before the end")
    other_pub.update(60, "still going")
    with ending_pub.write_lock:  # as lifecycle.finish holds it around the final write
        store_progress([ending_pub, other_pub], time.monotonic())
    assert Action.objects.get(pk=ending.pk).message == ""
    assert Action.objects.get(pk=other.pk).message == "still going"
    assert lifecycle.finish(ending_pub, "succeeded", response=1)
    ending_pub.update(41, "after the end")  # a late handler: dropped
    store_progress([ending_pub], time.monotonic() + 60)
    row = Action.objects.get(pk=ending.pk)
    assert (row.status, row.percent, row.message) == ("succeeded", 100, "before the end")
    assert not ending_pub.lost


@pytest.mark.usefixtures("recording")
def test_a_row_the_database_refuses_does_not_hold_back_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    (bad, bad_pub), (good, good_pub), (third, third_pub) = _running(3)
    good_pub.update(20, "good")
    third_pub.update(30, "third")
    bad_pub.update(50, "bad")
    bad_pub.add_log({"time": 0, "level": "INFO", "message": "kept for the retry"})
    bad_pub._data = math.nan  # not JSON: the database refuses the whole transaction
    with caplog.at_level(logging.WARNING, logger="async_actions"):
        store_progress([bad_pub, good_pub, third_pub], time.monotonic())
    assert Action.objects.get(pk=good.pk).message == "good"
    assert Action.objects.get(pk=third.pk).message == "third"
    assert Action.objects.get(pk=bad.pk).message == ""
    assert f"Progress of action {bad.pk} not written" in caplog.text
    bad_pub._data = {"ok": True}
    store_progress([bad_pub], time.monotonic() + 60)  # the next interval
    row = Action.objects.get(pk=bad.pk)
    assert (row.message, row.data) == ("bad", {"ok": True})
    assert [entry["message"] for entry in row.log] == ["kept for the retry"]


@pytest.mark.usefixtures("recording")
def test_a_row_that_stopped_running_marks_only_its_publisher_lost() -> None:
    (gone, gone_pub), (kept, kept_pub) = _running(2)
    Action.objects.filter(pk=gone.pk).update(status="failed", error="swept")
    gone_pub.update(70, "late")
    kept_pub.update(80, "on")
    store_progress([gone_pub, kept_pub], time.monotonic())
    assert gone_pub.lost and not kept_pub.lost
    assert Action.objects.get(pk=gone.pk).message == ""
    assert Action.objects.get(pk=kept.pk).message == "on"


def test_running_handlers_progress_is_written_by_the_supervisor_not_their_threads(
    runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers: set[str] = set()
    original = Publisher.store

    def spy(self: Publisher, *args: Any) -> None:
        writers.add(threading.current_thread().name)
        original(self, *args)

    monkeypatch.setattr(Publisher, "store", spy)
    monkeypatch.setattr(progress, "_store_batch", _spy_batch(writers, progress._store_batch))
    waiting = [
        service.start("tests.wait", {"gate": f"batch-{i}"}, session_key="s") for i in range(3)
    ]
    crashed = service.start("tests.boom", session_key="s")  # its crash costs the others nothing
    for started in waiting:
        wait_for(lambda pk=started.action.pk: Action.objects.get(pk=pk).message == "waiting")
    assert wait_finished(crashed.action.pk).status == "failed"
    assert writers == {"async-actions-supervisor"}
    for i, started in enumerate(waiting):
        gate(f"batch-{i}").set()
        row = wait_finished(started.action.pk)
        assert (row.status, row.response) == ("succeeded", "released")


def _spy_batch(writers: set[str], original: Any) -> Any:
    def spy(alias: str, batch: list[Any]) -> None:
        writers.add(threading.current_thread().name)
        original(alias, batch)

    return spy
