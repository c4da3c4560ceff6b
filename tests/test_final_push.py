"""The end of an action is pushed once, as the end: never first as a "running" state.

``finish`` and ``requeue`` take the next ``seq`` before their database write; the supervisor
thread, flushing trailing progress meanwhile, used to push that ``seq`` with status
"running" (seen by tests/test_scaleout.py as the last step arriving twice).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from async_actions import lifecycle, progress
from async_actions.progress import Publisher
from tests.helpers import running_action

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.usefixtures("recording")
@pytest.mark.parametrize("end", ["finish", "requeue"])
def test_the_monitor_does_not_push_the_end_seq_as_running(
    monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    _action, publisher = running_action()
    pushed: list[tuple[str, int]] = []
    monkeypatch.setattr(
        progress.pusher,
        "push",
        lambda pk, snapshot: pushed.append((snapshot["status"], snapshot["seq"])),
    )
    publisher.update(75, "last step")
    writing, release = threading.Event(), threading.Event()
    update_running = lifecycle._update_running

    def slow_update(publisher: Publisher, *args: Any) -> Any:
        writing.set()
        release.wait(10)
        return update_running(publisher, *args)

    monkeypatch.setattr(lifecycle, "_update_running", slow_update)
    if end == "finish":
        ending = threading.Thread(target=lifecycle.finish, args=(publisher, "succeeded"))
    else:
        ending = threading.Thread(
            target=lifecycle.requeue, args=(publisher,), kwargs={"run_after": None, "note": "again"}
        )
    ending.start()
    assert writing.wait(10)
    monitor = threading.Thread(target=publisher.flush_due, args=(time.monotonic() + 60,))
    monitor.start()
    monitor.join(2)  # returns at once; before the fix it pushed, then waited for the write
    assert [status for status, seq in pushed if seq == publisher.snapshot()["seq"]] == []
    release.set()
    ending.join(10)
    monitor.join(10)
    final_seq = pushed[-1][1]
    assert pushed[-1][0] == ("succeeded" if end == "finish" else "pending")
    assert [status for status, seq in pushed if seq == final_seq] == [pushed[-1][0]]
