"""Recovery: stale running actions are failed or requeued, lost dispatches resent."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import close_old_connections
from django.utils import timezone

from async_actions import recovery
from async_actions.models import Action
from tests.helpers import TASKS_RUNNER, wait_for, work

pytestmark = pytest.mark.django_db  # `runner` makes a test transactional (docs/architecture.md)


@pytest.fixture
def retried_handler(temporary_handler: Any) -> Any:
    @temporary_handler("tests.recover_twice", max_attempts=2)
    def recover_twice(ctx: Any) -> Any:
        return {"attempt": ctx.request.get("n", 0)}

    return recover_twice


def running(handler_name: str = "tests.echo", age: float = 60, **fields: Any) -> Action:
    long_ago = timezone.now() - timedelta(seconds=age)
    return Action.objects.create(
        handler=handler_name,
        status=Action.Status.RUNNING,
        started_at=long_ago,
        heartbeat_at=long_ago,
        attempt=1,
        **fields,
    )


def test_stale_running_action_is_failed_as_worker_lost() -> None:
    lost = running()
    report = recovery.sweep()
    assert report.failed == [lost.pk]
    lost.refresh_from_db()
    assert lost.status == "failed"
    assert "worker lost" in lost.error
    assert lost.finished_at is not None and lost.expires_at > lost.finished_at
    assert lost.seq == 1


def test_fresh_heartbeat_is_left_alone() -> None:
    alive = running(age=0.5)
    assert not recovery.sweep()
    alive.refresh_from_db()
    assert alive.status == "running"


def test_stale_action_with_attempts_left_is_requeued_and_runs_again(
    retried_handler: Any, runner: Any
) -> None:
    lost = running("tests.recover_twice", request={"n": 2})
    report = recovery.sweep()
    assert report.requeued == [lost.pk]
    final = wait_for(lambda: Action.objects.filter(pk=lost.pk).finished().first())
    assert final.status == "succeeded"
    assert final.attempt == 2
    assert final.response == {"attempt": 2}


def test_last_attempt_is_failed_not_requeued(retried_handler: Any) -> None:
    lost = running("tests.recover_twice")
    Action.objects.filter(pk=lost.pk).update(attempt=2)
    assert recovery.sweep().failed == [lost.pk]


def test_unknown_handler_is_failed() -> None:
    lost = running("gone.away")
    assert recovery.sweep().failed == [lost.pk]


def test_lost_pending_dispatch_is_sent_again(runner: Any) -> None:
    old = timezone.now() - timedelta(seconds=60)
    pending = Action.objects.create(handler="tests.echo", request={"x": 1})
    Action.objects.filter(pk=pending.pk).update(created_at=old)
    report = recovery.sweep()
    assert report.redispatched == [pending.pk]
    final = wait_for(lambda: Action.objects.filter(pk=pending.pk).finished().first())
    assert final.status == "succeeded"


def test_stale_holder_of_a_concurrency_key_frees_the_key_for_its_waiter(runner: Any) -> None:
    from tests import capability_actions  # noqa: F401  (caps.* handlers)

    holder = running("caps.import_one", concurrency_key="site-import")
    waiter = Action.objects.create(
        handler="caps.import_one", request={"hold": 0}, concurrency_key="site-import"
    )
    assert recovery.sweep().failed == [holder.pk]
    final = wait_for(lambda: Action.objects.filter(pk=waiter.pk).finished().first())
    assert final.status == "succeeded"


def test_dry_run_reports_without_changing() -> None:
    lost = running()
    report = recovery.sweep(dry_run=True)
    assert report.failed == [lost.pk]
    lost.refresh_from_db()
    assert lost.status == "running"


@pytest.mark.django_db(transaction=True)
def test_two_sweepers_racing_handle_each_row_once() -> None:
    lost = [running() for _ in range(20)]
    reports: list[recovery.SweepReport] = []
    barrier = threading.Barrier(2)

    def sweeper() -> None:
        barrier.wait()
        try:
            reports.append(recovery.sweep())
        finally:
            close_old_connections()

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [pk for report in reports for pk in report.failed]
    assert sorted(failed) == sorted(a.pk for a in lost)  # each exactly once
    assert Action.objects.filter(status="failed").count() == 20


def test_recover_command_prints_what_it_did(capsys: Any) -> None:
    lost = running()
    call_command("async_actions_recover", "--dry-run")
    assert "1 actions would be failed (worker lost)" in capsys.readouterr().out
    call_command("async_actions_recover")
    out = capsys.readouterr().out
    assert "1 actions were failed (worker lost)" in out and str(lost.pk) in out
    assert Action.objects.get(pk=lost.pk).status == "failed"


# -- no flood: a pending action goes again only when no live queue holds it ------------


def test_sweeps_queue_a_backlog_once_and_never_again_while_the_pool_holds_it(
    runner: Any,
) -> None:
    from async_actions import service
    from tests.actions import gate

    busy = [
        service.start("tests.wait", {"gate": f"flood-{i}"}, session_key="s").action.pk
        for i in range(runner.max_workers)
    ]
    wait_for(lambda: Action.objects.filter(status="running").count() == len(busy))
    old = timezone.now() - timedelta(seconds=60)
    # 40 pending rows no queue holds yet (what a fresh process finds after a crash).
    backlog = [Action.objects.create(handler="tests.echo", request={"n": i}).pk for i in range(40)]
    Action.objects.filter(pk__in=backlog).update(created_at=old)
    assert sorted(recovery.sweep().redispatched) == sorted(backlog)
    assert runner.queued_count == 40
    for _ in range(5):  # later sweeps find them waiting behind busy workers: not lost
        assert recovery.sweep().redispatched == []
        assert runner.queued_count == 40
    for i in range(len(busy)):
        gate(f"flood-{i}").set()
    wait_for(lambda: Action.objects.filter(pk__in=backlog, status="succeeded").count() == 40)
    assert set(Action.objects.filter(pk__in=backlog).values_list("attempt", flat=True)) == {1}
    assert runner.queued_count == 0


def test_dispatching_an_action_already_queued_is_a_no_op(runner: Any) -> None:
    from async_actions import service
    from tests.actions import gate

    busy = [
        service.start("tests.wait", {"gate": f"dedupe-{i}"}, session_key="s").action.pk
        for i in range(runner.max_workers)
    ]
    wait_for(lambda: Action.objects.filter(status="running").count() == len(busy))
    waiting = service.start("tests.echo", session_key="s").action.pk
    for _ in range(10):
        runner.dispatch(waiting)
    assert runner.queued_count == 1
    for i in range(len(busy)):
        gate(f"dedupe-{i}").set()
    final = wait_for(lambda: Action.objects.filter(pk=waiting).finished().first())
    assert (final.status, final.attempt) == ("succeeded", 1)


@pytest.mark.django_db(transaction=True)
def test_tasks_sweep_enqueues_again_only_what_the_backend_no_longer_holds() -> None:
    from django.test import override_settings
    from django_tasks_db.models import DBTaskResult

    from async_actions import service
    from async_actions.runners import reset_runner

    with override_settings(ASYNC_ACTIONS=TASKS_RUNNER):
        reset_runner()
        queued = service.start("tests.echo", {"case": "queued"}).action.pk
        stuck = service.start("tests.echo", {"case": "stuck"}).action.pk
        purged = service.start("tests.echo", {"case": "purged"}).action.pk
        unsent = Action.objects.create(handler="tests.echo", request={"case": "unsent"}).pk
        refs = dict(Action.objects.values_list("pk", "task_id"))
        assert refs[unsent] == "" and all(refs[pk] for pk in (queued, stuck, purged))
        long_ago = timezone.now() - timedelta(seconds=60)
        Action.objects.update(created_at=long_ago)
        # A worker claimed the task, then died before it claimed the action.
        DBTaskResult.objects.filter(pk=refs[stuck]).update(status="RUNNING", started_at=long_ago)
        DBTaskResult.objects.filter(pk=refs[purged]).delete()
        first = recovery.sweep()
        assert sorted(first.redispatched) == sorted([stuck, purged, unsent])
        tasks = DBTaskResult.objects.count()
        for _ in range(3):  # each now has a task waiting: nothing more is enqueued
            assert recovery.sweep().redispatched == []
        assert DBTaskResult.objects.count() == tasks
        work()
        for pk in (queued, stuck, purged, unsent):
            action = Action.objects.get(pk=pk)
            assert (action.status, action.attempt) == ("succeeded", 1)
    reset_runner()


def test_an_action_that_ends_while_the_sweep_asks_the_queue_is_not_dispatched_again(
    recording: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep reads the pending rows, then asks the queue what it holds. An action a
    thread takes and finishes in between is held nowhere and no longer pending: it must
    not be dispatched again (restart recovery counted one too many under load)."""
    old = timezone.now() - timedelta(seconds=60)
    pending = Action.objects.create(handler="tests.echo", request={"x": 1})
    Action.objects.filter(pk=pending.pk).update(created_at=old)

    def finished_meanwhile(action_ids: Any) -> set[Any]:
        Action.objects.filter(pk=pending.pk).update(status=Action.Status.SUCCEEDED)
        return set()

    monkeypatch.setattr(recording, "holds", finished_meanwhile)
    assert recovery.sweep().redispatched == []
    assert recording.dispatched == []
