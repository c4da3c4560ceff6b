"""Issue 15, finding 4: a server killed with work on hand recovers all of it when it
starts again, with no request at all, each action exactly once, and its queue bounded.

The embedded shape (daphne, SQLite, ThreadRunner), two server lives on one database
file. Each run of ``tests.held_work`` appends a line to ``AA_RUN_LOG``; the first life
runs with ``AA_HOLD=1`` so its four workers hold their actions until the kill.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.servers import ROOT, free_port, manage, sqlite_env, stop

STALE_AFTER, SWEEP_INTERVAL = 3.0, 1.0
RUNNING, PENDING = 4, 40  # MAX_WORKERS is 4

CREATE = """
from datetime import timedelta
from django.utils import timezone
from async_actions.models import Action
rows = [Action(handler="tests.held_work", request={{"n": n}}) for n in range({count})]
Action.objects.bulk_create(rows)
Action.objects.update(created_at=timezone.now() - timedelta(seconds=60))
"""


@contextmanager
def server(env: dict, log_path: Path) -> Iterator[subprocess.Popen]:
    """daphne on the demo's ASGI module; nobody sends it a request."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(free_port()),
             "example_project.asgi:application"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield process
        finally:
            stop(process)


def statuses(db: Path) -> Counter:
    with sqlite3.connect(db, timeout=20) as conn:
        return Counter(
            dict(conn.execute("SELECT status, count(*) FROM async_actions_action GROUP BY status"))
        )


def last_heartbeat(db: Path) -> str:
    with sqlite3.connect(db, timeout=20) as conn:
        row = conn.execute("SELECT max(heartbeat_at) FROM async_actions_action").fetchone()
    return row[0] or ""


def swept(log: str, what: str) -> int:
    """How many actions the recovery log lines of a server say were ``what``."""
    pattern = {"dispatched": r"(\d+) dispatched again", "requeued": r"(\d+) requeued"}[what]
    return sum(int(n) for n in re.findall(pattern, log))


@pytest.mark.slow
def test_killed_server_recovers_every_action_once_at_restart_without_requests(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs.log"
    env = sqlite_env(
        tmp_path,
        "tests.settings",
        AA_RUN_LOG=str(runs),
        AA_STALE_AFTER=str(STALE_AFTER),
        AA_SWEEP_INTERVAL=str(SWEEP_INTERVAL),
    )
    db = Path(env["AA_SQLITE_PATH"])
    manage(env, "migrate", "--noinput", "-v0")
    manage(env, "shell", "-c", CREATE.format(count=RUNNING + PENDING))

    # First life: its start-up sweep takes all 44; four run and hold, forty wait.
    with server({**env, "AA_HOLD": "1"}, tmp_path / "first.log") as first:
        wait_for(lambda: statuses(db) == {"running": RUNNING, "pending": PENDING}, timeout=30)
        beat = last_heartbeat(db)
        # Live through a few sweeps: none may queue the waiting forty again.
        wait_for(lambda: last_heartbeat(db) > beat, timeout=10)
        later = time.monotonic() + 3 * SWEEP_INTERVAL
        wait_for(lambda: time.monotonic() > later, timeout=10, interval=0.1)
        first.kill()  # SIGKILL: no shutdown, heartbeats frozen, queue lost
        first.wait()
    first_log = (tmp_path / "first.log").read_text()
    assert swept(first_log, "dispatched") == RUNNING + PENDING, first_log
    assert statuses(db) == {"running": RUNNING, "pending": PENDING}

    # Second life, no request: its start-up sweep runs the forty; the four go stale and
    # are run again (tests.held_work allows two attempts).
    with server(env, tmp_path / "second.log"):
        wait_for(lambda: statuses(db)["pending"] < PENDING, timeout=30)
        alive = time.monotonic()
        wait_for(
            lambda: statuses(db) == {"succeeded": RUNNING + PENDING},
            timeout=STALE_AFTER + SWEEP_INTERVAL,
        )
        done = time.monotonic() - alive
        # A sweep logs its report after its last row, and the actions it requeued may
        # have run by then: on a loaded machine the server stopped before the line.
        log_path = tmp_path / "second.log"
        wait_for(lambda: swept(log_path.read_text(), "requeued") >= RUNNING, timeout=30)
    second_log = log_path.read_text()
    assert done <= STALE_AFTER + SWEEP_INTERVAL
    assert swept(second_log, "dispatched") == PENDING, second_log
    assert swept(second_log, "requeued") == RUNNING, second_log

    lines = [line.split() for line in runs.read_text().splitlines()]
    per_action = Counter(pk for pk, _attempt, _pid in lines)
    assert len(per_action) == RUNNING + PENDING
    assert sorted(Counter(per_action.values()).items()) == [(1, PENDING), (2, RUNNING)]
    attempts = Counter((pk, attempt) for pk, attempt, _pid in lines)
    assert set(attempts.values()) == {1}  # no attempt of any action ran twice
