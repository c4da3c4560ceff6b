"""Many actions per worker process: ``async_actions_worker`` with ``WORKER_CONCURRENCY``.

Real ``async_actions_worker`` processes on a PostgreSQL database of their own: fifty
five-second actions on two processes end within ten seconds; a worker killed with
SIGKILL mid-way loses nothing (the sweep of the other one fails or retries what it
held) and no attempt runs twice; SIGTERM stops claiming, lets short actions finish,
cancels long ones and fails the ones that ignore the cancel.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import need, postgres_available
from tests.servers import ROOT, manage, pg, scratch_database, stop

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: Starts the actions of ``AA_START`` in one transaction (their tasks are enqueued as it
#: commits); prints the time all were queued, then their ids.
START = """
import json, os
from django.db import transaction
from django.utils import timezone
from async_actions import service
ids = []
with transaction.atomic():
    for handler, request in json.loads(os.environ["AA_START"]):
        ids.append(str(service.start(handler, request).action.pk))
print(timezone.now().isoformat(), " ".join(ids))
"""


@dataclass
class Site:
    env: dict[str, str]
    tmp: Path
    db: str

    def start(self, *actions: tuple[str, dict[str, Any]]) -> tuple[datetime, list[str]]:
        """Start actions through ``service.start`` in a shell process: the time all
        were queued, and their ids."""
        out = manage({**self.env, "AA_START": json.dumps(actions)}, "shell", "-c", START)
        queued, *ids = out.splitlines()[-1].split()  # Django 5.2's shell may print a line first
        return datetime.fromisoformat(queued), ids

    def rows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        names = ("id", "status", "attempt", "error", "created_at", "started_at", "finished_at")
        found = pg(
            f"SELECT id::text, {', '.join(names[1:])} FROM async_actions_action "
            "WHERE id = ANY(%s::uuid[])",
            ids,
            dbname=self.db,
        )
        return {row[0]: dict(zip(names, row, strict=True)) for row in found}

    def wait(self, ids: list[str], predicate: Any, timeout: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(ids)
            if predicate(rows):
                return rows
            if time.monotonic() > deadline:
                statuses = Counter(row["status"] for row in rows.values())
                raise AssertionError(f"not there within {timeout}s: {statuses}")
            time.sleep(0.1)

    def runs(self, log: Path) -> Counter[tuple[str, int]]:
        """(action id, attempt) -> how many times its handler body started."""
        if not log.exists():
            return Counter()
        return Counter((pk, int(attempt)) for pk, attempt, _pid in _lines(log))

    @contextmanager
    def workers(
        self, count: int, concurrency: int, run_log: Path, *, flag: bool = False
    ) -> Iterator[list[subprocess.Popen[bytes]]]:
        """``count`` worker processes, each polling with ``concurrency`` loops, set by
        ``WORKER_CONCURRENCY`` or (``flag``) by ``--concurrency`` over a setting of 1."""
        setting = "1" if flag else str(concurrency)
        env = {**self.env, "AA_WORKER_CONCURRENCY": setting, "AA_RUN_LOG": str(run_log)}
        command = [sys.executable, "manage.py", "async_actions_worker", "--no-reload",
                   "--no-startup-delay", "--interval", "0.5"]  # fmt: skip
        if flag:
            command += ["--concurrency", str(concurrency)]
        procs: list[subprocess.Popen[bytes]] = []
        try:
            logs = [self.tmp / f"{run_log.stem}-worker{n}.log" for n in range(count)]
            for log_path in logs:  # all start at once; then wait for each to poll
                with open(log_path, "w") as log:
                    procs.append(
                        subprocess.Popen(
                            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                        )
                    )
            for proc, log_path in zip(procs, logs, strict=True):
                _wait_polling(proc, log_path, concurrency)
            yield procs
        finally:
            for proc in procs:
                stop(proc)


def _timeline(rows: dict[str, dict[str, Any]], first: Any) -> str:
    """Seconds from the first start to the last creation, claim and end (for a failure)."""
    spans = {
        key: sorted((r[key] - first).total_seconds() for r in rows.values())
        for key in ("created_at", "started_at", "finished_at")
    }
    return ", ".join(f"{k}: {v[0]:.2f}..{v[-1]:.2f}" for k, v in spans.items())


def _lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines() if line.strip()]


def _wait_polling(proc: subprocess.Popen[bytes], log_path: Path, loops: int) -> None:
    """Return once every loop of the worker logged that it polls (django-tasks-db logs
    "Starting worker" as each loop enters its polling loop)."""
    deadline = time.monotonic() + 120
    while log_path.read_text(errors="replace").count("Starting worker") < loops:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}: {log_path.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"worker not polling after 120 s: {log_path}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    need(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    tmp = tmp_path_factory.mktemp("workers")
    with scratch_database("aa_workers") as name:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings_workers",
            "AA_WORKERS_DB": name,
            "PYTHONPATH": str(ROOT),
        }
        manage(env, "migrate", "--noinput", "-v0")
        yield Site(env, tmp, name)


def test_two_workers_of_25_run_fifty_five_second_actions_within_ten_seconds(site: Site) -> None:
    """The clock starts once all fifty are queued: starting them is the web process's
    work (0.3 s on an idle machine, several seconds on a loaded 2-core one)."""
    log = site.tmp / "fifty.log"
    with site.workers(2, concurrency=25, run_log=log) as procs:
        queued, ids = site.start(*[("tests.pause", {"seconds": 5})] * 50)
        rows = site.wait(ids, lambda rows: all(r["finished_at"] for r in rows.values()), timeout=60)
    assert {row["status"] for row in rows.values()} == {"succeeded"}
    last_end = max(r["finished_at"] for r in rows.values())
    # 250 action-seconds within 10 s: at least 25 ran at once on average (one at a time
    # per process, it would take 125 s).
    assert last_end - queued <= timedelta(seconds=10), _timeline(rows, queued)
    runs = site.runs(log)
    assert set(runs) == {(pk, 1) for pk in ids} and set(runs.values()) == {1}
    pids = Counter(int(pid) for _pk, _attempt, pid in _lines(log))
    assert sorted(pids) == sorted(p.pid for p in procs), "both workers should have taken work"


def test_a_worker_killed_mid_way_loses_nothing_and_runs_no_attempt_twice(site: Site) -> None:
    log = site.tmp / "killed.log"
    kinds = ["tests.pause", "tests.pause_retry"]
    with site.workers(2, concurrency=25, run_log=log) as procs:
        _queued, ids = site.start(*[(kinds[i % 2], {"seconds": 10}) for i in range(50)])
        kind = dict(zip(ids, kinds * 25, strict=True))
        site.wait(ids, lambda rows: all(r["status"] != "pending" for r in rows.values()), 60)
        victim = procs[0]
        killed_at = datetime.now(UTC)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        rows = site.wait(ids, lambda rows: all(r["finished_at"] for r in rows.values()), timeout=90)

    on_victim = {pk for pk, attempt, pid in _lines(log) if int(pid) == victim.pid}
    done_before = {
        pk for pk, r in rows.items() if r["attempt"] == 1 and r["finished_at"] < killed_at
    }
    held = on_victim - done_before
    assert {kind[pk] for pk in held} == set(kinds), "the kill should hit both kinds"
    for pk, row in rows.items():
        if pk not in held:
            assert (row["status"], row["attempt"]) == ("succeeded", 1), row
        elif kind[pk] == "tests.pause":  # one attempt allowed: the sweep fails it
            assert (row["status"], row["attempt"]) == ("failed", 1), row
            assert "worker lost" in row["error"]
        else:  # a second attempt, on the surviving worker
            assert (row["status"], row["attempt"]) == ("succeeded", 2), row
    runs = site.runs(log)
    assert set(runs.values()) == {1}, "an attempt ran twice"
    retried = {(pk, 2) for pk in held if kind[pk] == "tests.pause_retry"}
    assert set(runs) == {(pk, 1) for pk in ids} | retried


def test_sigterm_stops_claiming_finishes_short_actions_and_ends_long_ones(site: Site) -> None:
    """SHUTDOWN_TIMEOUT and SHUTDOWN_GRACE are 2 s each in the test settings."""
    log = site.tmp / "sigterm.log"
    gate = site.tmp / "short-may-end"
    with site.workers(1, concurrency=3, run_log=log, flag=True) as (worker,):
        _queued, (short, long, stubborn, waiting) = site.start(
            ("tests.wait_file", {"path": str(gate)}),  # ends once the worker is stopping
            ("tests.pause", {"seconds": 60}),  # answers the cancel
            ("tests.stubborn", {}),  # ignores it
            ("tests.pause", {"seconds": 1}),  # no free loop until the short one ends
        )
        site.wait(
            [short, long, stubborn],
            lambda rows: all(r["status"] == "running" for r in rows.values()),
            timeout=30,
        )
        worker.send_signal(signal.SIGTERM)
        worker_log = site.tmp / f"{log.stem}-worker0.log"
        deadline = time.monotonic() + 30
        while "Shutting down" not in worker_log.read_text():  # the signal was handled
            assert time.monotonic() < deadline, worker_log.read_text()
            time.sleep(0.05)
        gate.touch()  # the short action ends; its loop must not claim another
        assert worker.wait(timeout=30) == 0
    rows = site.rows([short, long, stubborn, waiting])
    assert rows[short]["status"] == "succeeded"
    assert rows[long]["status"] == "cancelled"
    assert rows[stubborn]["status"] == "failed"
    assert rows[stubborn]["error"] == "The worker shut down while the action was running."
    assert rows[waiting]["status"] == "pending", "a stopping worker claimed a new action"
