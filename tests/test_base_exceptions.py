"""A handler raising a ``BaseException`` (``SystemExit``, ``KeyboardInterrupt``,
``GeneratorExit``, ``CancelledError``, one of its own) fails its action and nothing else:
the runner thread, the action loop, the pool and a Tasks worker all carry on."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import pytest
from django.db import connection

from async_actions import service
from async_actions.executor import BASE_EXCEPTION_ERROR
from async_actions.models import Action
from async_actions.supervisor import supervisor
from tests.actions import BASE_EXCEPTIONS, barriers
from tests.helpers import wait_finished, wait_for, work
from tests.servers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

KINDS = sorted(BASE_EXCEPTIONS)
HANDLERS = {"sync": "tests.raise_base", "async": "tests.araise_base"}


def assert_failed_cleanly(pk: Any, kind: str) -> None:
    action = Action.objects.get(pk=pk)
    assert action.status == "failed", (action.status, action.error)
    assert action.error == BASE_EXCEPTION_ERROR.format(name=kind)
    assert kind in action.traceback  # for staff
    # No heartbeat, no cancel poll for it any more (unregistered just after the write).
    wait_for(lambda: supervisor.local(pk) is None and pk not in supervisor.running_ids(), timeout=5)


@pytest.mark.parametrize("mode", sorted(HANDLERS))
@pytest.mark.parametrize("kind", KINDS)
def test_base_exception_fails_the_action_on_the_thread_runner(
    runner: Any, kind: str, mode: str
) -> None:
    pk = service.start(HANDLERS[mode], {"kind": kind}, session_key="s").action.pk
    wait_finished(pk)
    assert_failed_cleanly(pk, kind)
    # A later action on the same pool still runs.
    after = service.start("tests.echo", {"after": kind}, session_key="s").action.pk
    assert wait_finished(after).status == "succeeded"


def test_pool_keeps_max_workers_threads_after_every_kind(runner: Any) -> None:
    size = runner.max_workers
    bad = [
        service.start(HANDLERS[mode], {"kind": kind}, session_key="s").action.pk
        for mode in sorted(HANDLERS)
        for kind in KINDS
    ]
    assert len(bad) > size  # more than the pool: each thread met several
    for pk in bad:
        wait_finished(pk)
        assert Action.objects.get(pk=pk).status == "failed"
    barriers["full-pool"] = barrier = threading.Barrier(size + 1)
    met = [
        service.start("tests.meet", {"barrier": "full-pool"}, session_key="s").action.pk
        for _ in range(size)
    ]
    barrier.wait(timeout=10)  # all MAX_WORKERS actions run at once, or this breaks
    for pk in met:
        assert wait_finished(pk).status == "succeeded"
    assert sum(thread.is_alive() for thread in runner._threads) == size


@pytest.mark.parametrize("mode", sorted(HANDLERS))
def test_base_exceptions_fail_their_actions_in_a_worker_that_carries_on(
    tasks_runner: Any, mode: str
) -> None:
    """db_worker in this process (its main thread, where Ctrl-C also lands)."""
    bad = {kind: service.start(HANDLERS[mode], {"kind": kind}).action.pk for kind in KINDS}
    after = service.start("tests.echo", {"after": "all"}).action.pk
    work()  # returns: the worker neither died nor hung
    for kind, pk in bad.items():
        assert_failed_cleanly(pk, kind)
    assert Action.objects.get(pk=after).status == "succeeded"


def _worker_env() -> dict[str, str]:
    """Environment for a subprocess using this test's database."""
    name = str(connection.settings_dict["NAME"])
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    if connection.vendor == "postgresql":
        return {**env, "AA_TEST_DB": "postgres", "AA_PG_NAME": name}
    return {**env, "AA_TEST_DB": "sqlite", "AA_SQLITE_PATH": name}


@pytest.mark.slow
def test_a_real_db_worker_survives_every_kind_and_runs_the_next_task(tasks_runner: Any) -> None:
    bad = {
        (mode, kind): service.start(HANDLERS[mode], {"kind": kind}).action.pk
        for mode in sorted(HANDLERS)
        for kind in KINDS
    }
    after = service.start("tests.echo", {"after": "all"}).action.pk
    connection.close()  # SQLite: let the worker write
    done = subprocess.run(
        [sys.executable, "manage.py", "db_worker", "--batch", "--no-startup-delay",
         "--interval", "0.05", "--no-reload", "-v0"],
        cwd=ROOT, env=_worker_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for (_mode, kind), pk in bad.items():
        action = Action.objects.get(pk=pk)
        assert (action.status, action.error) == (
            "failed",
            BASE_EXCEPTION_ERROR.format(name=kind),
        )
        assert action.heartbeat_at is not None
    assert Action.objects.get(pk=after).status == "succeeded"
