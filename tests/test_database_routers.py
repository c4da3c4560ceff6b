"""Actions on a database of their own (``DATABASE_ROUTERS``), reads sent to a replica.

A site may route the app's rows away from ``default``. Every statement of a transition,
the transaction around it, its locks and its after-commit steps must then run on the
actions' database: a transaction opened on ``default`` rolls nothing back there and a
lock taken there guards nothing. And the engine decides on what it reads (is the key
busy, is this request a repeat, who waits), so it reads from where it writes, never from
a replica that lags. Here the replica is a database the writes never reach, the worst
lag there is; ``default`` holds the same tables, so a stray statement there does not
fail, it only goes wrong, which is what the counts below look for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connections, transaction
from django.test import override_settings

from async_actions import service
from async_actions.checks import check_settings
from async_actions.models import Action
from async_actions.runners import get_runner, reset_runner
from tests.actions import gate
from tests.helpers import Recording, wait_for

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "actions", "replica"])

ROUTER = f"{__name__}.ActionsElsewhere"


class ActionsElsewhere:
    """Every write to "actions"; the app's reads to ``reads`` (the other apps' reads
    follow their writes, so sessions and users resolve)."""

    reads = "actions"

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return self.reads if model._meta.app_label == "async_actions" else "actions"

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "actions"

    def allow_relation(self, *objects: Any, **hints: Any) -> bool:
        return True


def on(alias: str) -> Any:
    return Action.objects.using(alias)


def routed(reads: str = "actions", **options: Any) -> override_settings:
    ActionsElsewhere.reads = reads
    return override_settings(
        DATABASE_ROUTERS=[ROUTER],
        ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, "MAX_WORKERS": 4, **options},
    )


@pytest.fixture(params=["actions", "replica"], ids=["reads-on-actions", "reads-on-replica"])
def reads(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param
    ActionsElsewhere.reads = "actions"
    reset_runner()


def test_a_refused_start_leaves_nothing_behind_on_the_actions_database(reads: str) -> None:
    with routed(reads, MAX_ACTIVE_PER_OWNER=1, RUNNER="tests.helpers.Recording"):
        reset_runner()
        first = service.start("tests.echo", session_key="s1", run_after=timedelta(hours=1))
        assert first.ok
        refused = service.start("tests.echo", session_key="s1")
        assert refused.status is service.OpStatus.LIMIT_REACHED
        assert on("actions").count() == 1
        runner = get_runner()
        assert isinstance(runner, Recording)
        assert runner.dispatched == []  # the first waits for its time, the second never was
    assert on("default").count() == 0


def test_a_busy_key_refuses_a_start_and_leaves_no_row(reads: str, temporary_handler: Any) -> None:
    @temporary_handler("tests.routed_refuse", concurrency_key="one-at-a-time", on_busy="refuse")
    def refuse(ctx: Any) -> str:
        return "done"

    with routed(reads, RUNNER="tests.helpers.Recording"):
        reset_runner()
        held = service.start("tests.routed_refuse", run_after=timedelta(hours=1))
        assert held.ok
        busy = service.start("tests.routed_refuse")
        assert busy.status is service.OpStatus.BUSY
        assert on("actions").count() == 1
    assert on("default").count() == 0


def test_a_repeated_idempotency_key_answers_with_the_first_action(reads: str) -> None:
    with routed(reads, RUNNER="tests.helpers.Recording"):
        reset_runner()
        first = service.start("tests.echo", session_key="s1", idempotency_key="k1")
        again = service.start("tests.echo", session_key="s1", idempotency_key="k1")
        assert first.ok and again.ok, (first.status, again.status)
        assert (again.created, again.action.pk) == (False, first.action.pk)
        assert on("actions").count() == 1


def test_a_start_inside_a_transaction_on_the_actions_database_dispatches_at_its_commit(
    reads: str,
) -> None:
    with routed(reads, RUNNER="tests.helpers.Recording"):
        reset_runner()
        runner = get_runner()
        assert isinstance(runner, Recording)
        with transaction.atomic(using="actions"):
            started = service.start("tests.echo")
            assert started.ok
            assert runner.dispatched == []  # a worker would not find the row yet
        assert runner.dispatched == [started.action.pk]
        with transaction.atomic(using="actions"):
            rolled_back = service.start("tests.echo")
            transaction.set_rollback(True, using="actions")
        assert runner.dispatched == [started.action.pk]
        assert not on("actions").filter(pk=rolled_back.action.pk).exists()


def test_actions_run_end_and_free_their_place_on_the_actions_database(reads: str) -> None:
    """The thread runner claims and finishes there, and the end of the owner's running
    action dispatches the one the cap kept waiting (after the commit on "actions")."""
    release = gate("routed-cap")
    release.clear()
    with routed(reads, MAX_RUNNING_PER_OWNER=1):
        reset_runner()
        try:
            first = service.start("tests.wait", {"gate": "routed-cap"}, session_key="s")
            wait_for(lambda: on("actions").get(pk=first.action.pk).status == "running")
            second = service.start("tests.echo", session_key="s")
            assert second.ok
            # The cap keeps it waiting while the first runs.
            assert on("actions").get(pk=second.action.pk).status == "pending"
            release.set()
            wait_for(lambda: on("actions").get(pk=second.action.pk).status == "succeeded")
            assert on("actions").get(pk=first.action.pk).status == "succeeded"
        finally:
            release.set()
    assert on("default").count() == 0


def test_operations_from_outside_change_the_row_on_the_actions_database(reads: str) -> None:
    with routed(reads, RUNNER="tests.helpers.Recording"):
        reset_runner()
        pending = service.start("tests.echo", run_after=timedelta(hours=1)).action
        assert service.update_progress(pending.pk, 40, "half") is service.OpStatus.OK
        assert service.cancel(pending.pk) is service.OpStatus.OK
        assert service.cancel(pending.pk) is service.OpStatus.ACTION_COMPLETED
        done = service.start("tests.echo", run_after=timedelta(hours=1)).action
        assert service.complete(done.pk, {"ok": True}) is service.OpStatus.OK
        assert service.fail(done.pk, "late") is service.OpStatus.ACTION_COMPLETED
        rows = {row.pk: row for row in on("actions").all()}
        assert (rows[pending.pk].status, rows[pending.pk].message) == ("cancelled", "half")
        assert (rows[done.pk].status, rows[done.pk].response) == ("succeeded", {"ok": True})
    assert on("default").count() == 0


def test_racing_starts_of_one_owner_never_pass_its_limit_together() -> None:
    """The limit's count and the INSERT share one transaction on the actions' database,
    under the owner's lock (PostgreSQL) or the database's write lock (SQLite)."""
    starts = 6
    barrier = threading.Barrier(starts)
    results: list[Any] = []

    def start() -> None:
        try:
            barrier.wait()
            results.append(service.start("tests.echo", session_key="racer").status)
        finally:
            connections.close_all()

    with routed(MAX_ACTIVE_PER_OWNER=1, RUNNER="tests.helpers.Recording"):
        reset_runner()
        try:
            threads = [threading.Thread(target=start) for _ in range(starts)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert results.count(service.OpStatus.OK) == 1, results
            assert results.count(service.OpStatus.LIMIT_REACHED) == starts - 1, results
            assert on("actions").count() == 1
        finally:
            reset_runner()


class FilesElsewhere(ActionsElsewhere):
    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "replica" if model._meta.model_name == "actionfile" else "actions"


class UsersOnDefault(ActionsElsewhere):
    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "actions" if model._meta.app_label == "async_actions" else "default"


def routing_checks() -> list[str]:
    return [m.id for m in check_settings() if m.id in ("async_actions.E050", "async_actions.W050")]


def test_the_checks_report_a_router_that_splits_what_must_stay_together() -> None:
    with override_settings(DATABASE_ROUTERS=[ROUTER]):
        assert routing_checks() == []
    with override_settings(DATABASE_ROUTERS=[f"{__name__}.FilesElsewhere"]):
        assert routing_checks() == ["async_actions.E050"]
    with override_settings(DATABASE_ROUTERS=[f"{__name__}.UsersOnDefault"]):
        assert routing_checks() == ["async_actions.W050"]
    assert routing_checks() == []
