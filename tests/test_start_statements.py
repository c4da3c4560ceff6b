"""What one start and one run cost in statements, so the round trips saved (issue 18)
cannot silently come back.

On the TasksRunner with django-tasks-db on the actions' database, ``service.start`` inserts
the task inside its own transaction, before the action whose INSERT carries the task's id:
nothing is sent after the commit, a rolled-back start leaves no task, and a worker never
sees a task without its action.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models.signals import post_save, pre_save
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django_tasks_db.models import DBTaskResult

from async_actions import executor, lifecycle, service, statements
from async_actions.models import Action
from async_actions.runners import get_runner, reset_runner
from tests.helpers import TASKS_RUNNER, work

pytestmark = pytest.mark.django_db(transaction=True)

#: An anonymous owner under every limit the start counts, and the fair-priority cap.
LIMITED = {
    **settings.ASYNC_ACTIONS,
    **TASKS_RUNNER,
    "MAX_ACTIVE_PER_OWNER": 5,
    "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": 5,
    "MAX_RUNNING_PER_OWNER": 1,
}
OWNER = {"session_key": "s-statements", "client_address": "10.0.0.7"}


@pytest.fixture
def limited_runner() -> Any:
    with override_settings(ASYNC_ACTIONS=LIMITED):
        reset_runner()
        yield get_runner()
    reset_runner()


def _statements(func: Any) -> tuple[Any, list[str]]:
    with CaptureQueriesContext(connection) as captured:
        result = func()
    return result, [q["sql"] for q in captured.captured_queries]


def _kinds(sql: list[str]) -> list[str]:
    """Each statement's first word, with the table an INSERT writes to."""
    kinds = []
    for statement in sql:
        words = statement.split()
        kind = words[0].upper()
        if kind == "INSERT":
            kind += " " + words[2].strip('"')
        kinds.append(kind)
    return kinds


def test_start_inserts_its_task_then_the_action_that_names_it(tasks_runner: Any) -> None:
    started, sql = _statements(lambda: service.start("tests.echo", {"n": 1}))
    assert started.ok
    assert _kinds(sql) == [
        "BEGIN",
        "INSERT django_tasks_database_dbtaskresult",
        "INSERT async_actions_action",
        "COMMIT",
    ]
    task = DBTaskResult.objects.get()
    assert Action.objects.get().task_id == str(task.pk)
    assert task.args_kwargs == {"args": [str(started.action.pk)], "kwargs": {}}


def test_a_limited_owners_start_counts_once_and_takes_its_priority_from_that(
    limited_runner: Any,
) -> None:
    service.start("tests.echo", **OWNER)
    service.start("tests.echo", **OWNER)
    started, sql = _statements(lambda: service.start("tests.echo", **OWNER))
    assert started.ok
    assert _kinds(sql) == [
        "BEGIN",
        "SELECT",  # both limits and the owner's backlog, in one query
        "INSERT django_tasks_database_dbtaskresult",
        "INSERT async_actions_action",
        "COMMIT",
    ]
    if connection.vendor == "postgresql":
        # The advisory locks of the session's and the address's limits go in the same
        # round trip, each its own statement ahead of the counts, so their snapshot is
        # taken once the locks are held.
        *locks, counts = sql[1].split("; ")
        assert len(locks) == 2
        assert all(lock.startswith("SELECT pg_advisory_xact_lock(") for lock in locks)
        assert counts.startswith("SELECT (SELECT COUNT(*)")
    task = DBTaskResult.objects.get(pk=Action.objects.get(pk=started.action.pk).task_id)
    assert task.priority == -2  # two unfinished actions of this owner before it


def test_a_start_sends_the_save_signals_of_a_created_action(tasks_runner: Any) -> None:
    """The start writes the action's row with its own INSERT; receivers of the model's
    ``pre_save``/``post_save`` still see it as ``Action.objects.create`` showed it."""
    seen: list[tuple[str, Any, bool, str | None]] = []

    def before(sender: Any, instance: Action, **kwargs: Any) -> None:
        seen.append(("pre", instance.pk, instance._state.adding, kwargs["using"]))

    def after(sender: Any, instance: Action, created: bool, **kwargs: Any) -> None:
        assert created
        seen.append(("post", instance.pk, instance._state.adding, instance._state.db))

    pre_save.connect(before, sender=Action, dispatch_uid="test-pre")
    post_save.connect(after, sender=Action, dispatch_uid="test-post")
    try:
        started = service.start("tests.echo", {"n": 1}, session_key="s", page="p")
    finally:
        pre_save.disconnect(sender=Action, dispatch_uid="test-pre")
        post_save.disconnect(sender=Action, dispatch_uid="test-post")
    pk = started.action.pk
    assert seen == [("pre", pk, True, "default"), ("post", pk, False, "default")]
    stored = Action.objects.get(pk=pk)
    assert (stored.request, stored.session_key, stored.page) == ({"n": 1}, "s", "p")
    assert stored.created_at == started.action.created_at is not None
    assert stored.status == started.action.status == "pending"


def test_the_starts_insert_names_the_columns_the_orms_would(db: None) -> None:
    """The start's hand-written INSERT (``statements.insert_sql``) writes the columns
    ``save(force_insert=True)`` writes: a field the ORM leaves out of an INSERT (a
    generated one) or fills in the database would make this fail before a start does."""
    with CaptureQueriesContext(connection) as orm, transaction.atomic():
        Action(handler="tests.echo").save(force_insert=True)
        transaction.set_rollback(True)
    (orm_insert,) = [q["sql"] for q in orm.captured_queries if q["sql"].startswith("INSERT")]
    ours = statements.insert_sql(connection.alias)
    assert ours.split(" VALUES ")[0] == orm_insert.split(" VALUES ")[0]
    assert ours.count("%s") == len(Action._meta.local_concrete_fields)


def test_a_start_over_the_limit_leaves_no_task(limited_runner: Any) -> None:
    for _ in range(5):
        assert service.start("tests.echo", **OWNER).ok
    assert service.start("tests.echo", **OWNER).status is service.OpStatus.LIMIT_REACHED
    assert DBTaskResult.objects.count() == Action.objects.count() == 5


def test_a_start_in_a_rolled_back_block_leaves_neither_action_nor_task(
    tasks_runner: Any,
) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        assert service.start("tests.echo").ok
        assert DBTaskResult.objects.count() == 1  # inserted with the action, in the block
        raise RuntimeError("roll back")
    assert DBTaskResult.objects.count() == 0
    assert Action.objects.count() == 0
    assert service.start("tests.echo").ok  # and the next start is whole
    work()
    assert Action.objects.get().status == "succeeded"


def test_a_repeated_idempotency_key_sends_no_task(tasks_runner: Any) -> None:
    first = service.start("tests.echo", idempotency_key="k", session_key="s")
    again = service.start("tests.echo", idempotency_key="k", session_key="s")
    assert again.action == first.action and not again.created
    assert DBTaskResult.objects.count() == 1


def test_a_delayed_start_gives_its_task_the_same_run_after(tasks_runner: Any) -> None:
    started = service.start("tests.echo", run_after=timedelta(hours=1))
    task = DBTaskResult.objects.get()
    assert task.run_after == Action.objects.get(pk=started.action.pk).run_after


def test_a_worker_claims_and_finishes_in_a_fixed_number_of_statements(
    tasks_runner: Any,
) -> None:
    started = service.start("tests.echo")
    status, sql = _statements(lambda: executor.execute(started.action.pk))
    assert status == "succeeded"
    # With no owner cap, no owner read and no look-up of a next waiting action: the
    # claim's UPDATE … RETURNING, alone in autocommit, and the finish's.
    assert _kinds(sql) == ["UPDATE", "UPDATE"]


def test_a_capped_owners_claim_reads_and_locks_its_owner_in_one_statement(
    limited_runner: Any,
) -> None:
    started = service.start("tests.echo", **OWNER)
    status, sql = _statements(lambda: executor.execute(started.action.pk))
    assert status == "succeeded"
    if connection.vendor == "postgresql":
        # Two round trips, each one string the server runs as one transaction: the
        # owner read with its advisory lock, then the claim's UPDATE; the owner's lock,
        # the finish, then the look-up of the owner's next waiting action.
        assert [_kinds(trip.split("; ")) for trip in sql] == [
            ["SELECT", "UPDATE"],
            ["SELECT", "UPDATE", "SELECT"],
        ]
        assert all("pg_advisory_xact_lock" in trip.split("; ")[0] for trip in sql)
    else:
        # SQLite: one UPDATE that counts the row's own owner under the write lock it
        # takes as it starts; then the finish, and the look-up of the next waiting action.
        assert _kinds(sql) == ["UPDATE", "UPDATE", "SELECT"]
        assert "RETURNING" in sql[0]


def _claim(pk: Any) -> tuple[tuple[Any, bool], list[str]]:
    """``lifecycle.claim`` outside a transaction, and the statements it sent (the
    first: the claim's own UPDATE, with no owner read or BEGIN before it)."""
    result, sql = _statements(lambda: lifecycle.claim(pk))
    first = _kinds(sql[0].split("; "))[-1] if connection.vendor == "postgresql" else sql[0]
    assert first.split()[0].upper() == "UPDATE", sql
    return result, sql


def test_a_claim_refused_at_the_owners_cap_waits(limited_runner: Any) -> None:
    running = service.start("tests.echo", **OWNER).action.pk
    waiting = service.start("tests.echo", **OWNER).action.pk
    (claimed, waits), _ = _claim(running)
    assert claimed is not None and claimed.status == "running" and not waits
    (claimed, waits), _ = _claim(waiting)
    assert (claimed, waits) == (None, True)
    assert Action.objects.get(pk=waiting).status == "pending"


def test_a_claim_of_an_action_no_longer_pending_does_not_wait_even_at_the_cap(
    limited_runner: Any,
) -> None:
    pk = service.start("tests.echo", **OWNER).action.pk
    (claimed, _), _ = _claim(pk)
    assert claimed is not None
    (claimed, waits), _ = _claim(pk)  # the owner is at its cap, but by this very action
    assert (claimed, waits) == (None, False)


def test_a_claim_waits_while_its_concurrency_key_is_busy(limited_runner: Any) -> None:
    first = service.start("tests.echo", session_key="s-a").action.pk
    second = service.start("tests.echo", session_key="s-b").action.pk
    Action.objects.filter(pk__in=[first, second]).update(concurrency_key="statements-key")
    (claimed, waits), _ = _claim(first)
    assert claimed is not None and not waits
    (claimed, waits), _ = _claim(second)  # the unique index on running keys refuses it
    assert (claimed, waits) == (None, True)
    assert Action.objects.get(pk=second).status == "pending"


def test_a_claim_before_run_after_is_refused_without_waiting(limited_runner: Any) -> None:
    pk = service.start("tests.echo", run_after=timedelta(hours=1), **OWNER).action.pk
    (claimed, waits), _ = _claim(pk)
    assert (claimed, waits) == (None, False)
    assert Action.objects.get(pk=pk).status == "pending"


def test_a_claim_inside_the_callers_transaction_keeps_its_transaction(
    limited_runner: Any,
) -> None:
    pk = service.start("tests.echo", **OWNER).action.pk
    with transaction.atomic():
        claimed, waits = lifecycle.claim(pk)
        assert claimed is not None and not waits
        transaction.set_rollback(True)
    assert Action.objects.get(pk=pk).status == "pending"


def test_a_polling_worker_never_finds_a_task_without_its_action(tasks_runner: Any) -> None:
    """PostgreSQL: starts in one connection, a poller in another reading every task that
    exists and the actions they carry, in one snapshot."""
    if connection.vendor != "postgresql":
        pytest.skip("a poller beside the starts needs concurrent readers (AA_TEST_DB=postgres)")
    done = threading.Event()
    orphans: list[str] = []
    seen = [0]

    def poll() -> None:
        try:
            with connections["default"].cursor() as cursor:
                while not done.is_set():
                    cursor.execute(
                        "SELECT t.args_kwargs -> 'args' ->> 0 FROM "
                        "django_tasks_database_dbtaskresult t WHERE NOT EXISTS (SELECT 1 "
                        "FROM async_actions_action a WHERE a.id::text = "
                        "t.args_kwargs -> 'args' ->> 0)"
                    )
                    orphans.extend(row[0] for row in cursor.fetchall())
                    seen[0] += 1
        finally:
            connections["default"].close()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for _ in range(100):
            assert service.start("tests.echo").ok
    finally:
        done.set()
        poller.join()
    assert seen[0] > 0
    assert orphans == []
    assert DBTaskResult.objects.count() == 100
