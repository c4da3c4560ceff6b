"""Actions outlive the process that started them (issue 17 items 4 and 5; issue 19 item 7).

In the embedded shape a process that never called ``async_actions.startup()`` (a shell,
cron, ``async_actions_start``) only inserts the action and exits at once; the server
(daphne, whose ``asgi.py`` calls ``startup()``) runs it: told by NOTIFY on PostgreSQL,
finding it by a poll on SQLite. The test process itself is a server by settings
(``RUN_WITHOUT_STARTUP``); the processes here are real ones.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from async_actions import service
from async_actions.management.commands.async_actions_run import EXIT_NOT_STARTED, EXIT_USAGE
from async_actions.models import Action
from async_actions.runners import get_runner, pickup, reset_runner
from async_actions.runners.thread import ThreadRunner
from tests.helpers import need, postgres_available, wait_finished, wait_for
from tests.servers import ROOT, daphne, manage, pg, scratch_database, sqlite_env

pytestmark = pytest.mark.django_db(transaction=True)


# -- a process that is no server -------------------------------------------------------------


@pytest.fixture
def not_a_server(settings: Any) -> Iterator[ThreadRunner]:
    """This process as a shell or cron script is: it never called startup()."""
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "RUN_WITHOUT_STARTUP": False}
    reset_runner()
    runner = get_runner()
    assert isinstance(runner, ThreadRunner) and not runner.runs_here
    yield runner
    reset_runner()


def test_a_process_that_never_called_startup_inserts_and_runs_nothing(
    not_a_server: ThreadRunner,
) -> None:
    now = service.start("tests.echo", {"n": 1}).action.pk
    later = service.start("tests.echo", run_after=timedelta(seconds=1)).action.pk
    assert not_a_server.holds([now, later]) == set()  # no queue, no timer here
    assert not_a_server.active_count == not_a_server.queued_count == 0
    assert not_a_server._threads == []  # no pool thread was started
    assert set(Action.objects.values_list("status", flat=True)) == {"pending"}


def test_the_server_picks_up_what_other_processes_inserted(runner: ThreadRunner) -> None:
    """``waiting_here`` is one look at the table, as each poll (or a NOTIFY) does."""
    plain = Action.objects.create(handler="tests.echo", request={"n": 1})
    delayed = Action.objects.create(
        handler="tests.echo", run_after=timezone.now() + timedelta(seconds=1)
    )
    keyed = Action.objects.create(handler="tests.echo", concurrency_key="k")
    old = Action.objects.create(handler="tests.echo")
    Action.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    taken = pickup.waiting_here(runner)
    assert sorted(taken) == sorted([plain.pk, delayed.pk])  # the keyed one is woken
    for action in (plain, keyed):
        assert wait_finished(action.pk).status == "succeeded"
    done = wait_finished(delayed.pk)
    assert done.started_at >= done.run_after
    assert pickup.waiting_here(runner) == []  # nothing twice; the old one is the sweep's
    assert Action.objects.get(pk=old.pk).status == "pending"


def test_an_action_cancelled_at_process_exit_says_why(settings: Any, runner: Any) -> None:
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "SHUTDOWN_TIMEOUT": 0.2}
    pool = get_runner()
    pk = service.start("tests.wait", {"gate": "never-pickup"}).action.pk
    wait_for(lambda: Action.objects.get(pk=pk).status == "running")
    pool.shutdown()
    action = Action.objects.get(pk=pk)
    assert action.status == "cancelled"
    assert f"the process running it (pid {os.getpid()}) stopped" in action.error
    assert "async_actions.startup()" in action.error


# -- async_actions_start ---------------------------------------------------------------------


def start_command(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("async_actions_start", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue().strip()


def test_the_start_command_prints_the_id_of_a_pending_action(not_a_server: Any) -> None:
    out, _ = start_command("tests.echo", "--json", '{"n": 2}', "--run-after", "1h")
    action = Action.objects.get(pk=uuid.UUID(out))
    assert (action.status, action.request, action.handler) == ("pending", {"n": 2}, "tests.echo")
    assert action.run_after - timezone.now() > timedelta(minutes=59)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["tests.nope"], EXIT_NOT_STARTED, "No handler named 'tests.nope'"),
        (["tests.echo", "--json", "{nope"], EXIT_USAGE, "--json"),
        (["tests.echo", "--json", "[" * 600 + "]" * 600], EXIT_USAGE, "nested"),
        (["tests.echo", "--run-after", "soonish"], EXIT_USAGE, "--run-after"),
        (["tests.echo", "--user", "nobody"], EXIT_USAGE, "No user 'nobody'"),
        (["tests.echo", "--idempotency-key", "k" * 256], EXIT_USAGE, "255"),
    ],
    ids=["unknown-handler", "bad-json", "too-deep", "bad-time", "no-user", "long-key"],
)
def test_the_start_command_refuses_with_its_exit_code(
    not_a_server: Any, args: list[str], code: int, message: str
) -> None:
    with pytest.raises(CommandError, match=message) as refused:
        start_command(*args)
    assert refused.value.returncode == code
    assert Action.objects.count() == 0


def test_a_doubled_tick_starts_once_even_after_the_first_finished(runner: Any) -> None:
    template = "nightly-%Y-%m-%d"
    first, note = start_command("tests.echo", "--idempotency-key", template)
    assert note == ""
    key = Action.objects.get(pk=first).idempotency_key
    assert key == f"nightly-{timezone.localtime():%Y-%m-%d}"
    again, note = start_command("tests.echo", "--idempotency-key", template)  # still active?
    assert again == first and "Already started" in note
    wait_finished(first)
    late, note = start_command("tests.echo", "--idempotency-key", template)  # finished
    assert late == first and "Already started" in note
    assert Action.objects.count() == 1
    other, _ = start_command("tests.echo", "--idempotency-key", "other-%Y")
    assert other != first


# -- real processes: a script starts, a running server finishes ------------------------------


def _rows(env: dict[str, str], pk: str) -> dict[str, Any] | None:
    """The action's row as another process sees it, read without Django."""
    query = "SELECT status, response, started_at, run_after FROM async_actions_action WHERE id = "
    if env["AA_TEST_DB"] == "sqlite":
        with sqlite3.connect(env["AA_SQLITE_PATH"], timeout=20) as conn:
            row = conn.execute(query + "?", [uuid.UUID(pk).hex]).fetchone()
        if row is None:
            return None
        started = datetime.fromisoformat(row[2]) if row[2] else None
        run_after = datetime.fromisoformat(row[3]) if row[3] else None
        return {"status": row[0], "response": json.loads(row[1] or "null"),
                "started_at": started, "run_after": run_after}  # fmt: skip
    rows = pg(query + "%s", pk, dbname=env["AA_PG_NAME"])
    if not rows:
        return None
    return dict(zip(["status", "response", "started_at", "run_after"], rows[0], strict=True))


@pytest.fixture(params=["sqlite", "postgres"])
def shape(request: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of the embedded shape on a fresh database of its own."""
    if request.param == "sqlite":
        # No LISTEN/NOTIFY: the server polls; the sweep (an hour) cannot be what finds it.
        yield sqlite_env(tmp_path, "tests.settings", AA_PICKUP_POLL_INTERVAL="0.2")
        return
    need(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    with scratch_database("aa_pickup") as name:
        # An hour between polls: only a NOTIFY can bring the action in time.
        yield {**sqlite_env(tmp_path, "tests.settings"), "AA_TEST_DB": "postgres",
               "AA_PG_NAME": name, "AA_PICKUP_POLL_INTERVAL": "3600"}  # fmt: skip


def script(env: dict[str, str], *args: str) -> str:
    """``manage.py async_actions_start ...`` as cron runs it (no startup()): the id."""
    done = subprocess.run(
        [sys.executable, "manage.py", "async_actions_start", *args],
        cwd=ROOT, env={**env, "AA_RUN_WITHOUT_STARTUP": "0"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


@pytest.mark.slow
def test_a_script_starts_and_exits_and_the_running_server_finishes_it(
    shape: dict[str, str], tmp_path: Path
) -> None:
    with daphne(shape, tmp_path / "server.log") as server:
        for n in range(2):  # the second surely after the server listens or polls
            gate = tmp_path / f"gate-{n}"
            pk = script(shape, "tests.wait_file", "--json", json.dumps({"path": str(gate)}))
            # The script is gone; its action cannot end before the gate opens. (Run by
            # the script, as before, it would have been cancelled at the script's exit.)
            assert _rows(shape, pk)["status"] in ("pending", "running")
            wait_for(lambda pk=pk: _rows(shape, pk)["status"] == "running", timeout=30)
            gate.touch()
            row = wait_for(lambda pk=pk: (r := _rows(shape, pk)) and r["status"] in
                           ("succeeded", "failed", "cancelled") and r, timeout=30)  # fmt: skip
            assert (row["status"], row["response"]) == ("succeeded", "released"), server.log()
        delayed = script(shape, "tests.scaled_work", "--json", '{"steps": 1, "delay": 0}',
                         "--run-after", "3s")  # fmt: skip
        row = wait_for(lambda: (r := _rows(shape, delayed)) and r["status"] == "succeeded" and r,
                       timeout=30)  # fmt: skip
        assert row["started_at"] >= row["run_after"]
        assert row["response"]["pid"] == server.process.pid


@pytest.mark.slow
def test_a_delayed_start_keeps_its_time_across_a_server_restart(tmp_path: Path) -> None:
    """The first server holds the timer (it polled the row in); it stops before the time.
    The second has pick-up off: only its start-up sweep, reading ``run_after`` from the
    row, can set the timer again."""
    polling = sqlite_env(tmp_path, "tests.settings", AA_PICKUP_POLL_INTERVAL="0.2")
    manage(polling, "migrate", "--noinput", "-v0")
    with daphne(polling, tmp_path / "first.log", migrate=False):
        pk = script(polling, "tests.scaled_work", "--json", '{"steps": 1, "delay": 0}',
                    "--run-after", "25s")  # fmt: skip
        time.sleep(1)  # a few polls: the first server sets its timer
    assert _rows(polling, pk)["status"] == "pending"  # the first life ended before the time
    quiet = sqlite_env(tmp_path, "tests.settings")
    with daphne(quiet, tmp_path / "second.log", migrate=False) as server:
        row = wait_for(lambda: (r := _rows(quiet, pk)) and r["status"] == "succeeded" and r,
                       timeout=60)  # fmt: skip
        assert row["started_at"] >= row["run_after"]
        assert row["response"]["pid"] == server.process.pid
