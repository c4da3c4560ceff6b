"""TasksRunner: dispatch through Django's Tasks framework (database backend), run by
``db_worker``; duplicate deliveries never run an action twice."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from async_actions import service
from async_actions.models import Action
from async_actions.runners import get_runner, reset_runner
from async_actions.runners.tasks import TasksRunner, run_action
from async_actions.tasks_compat import SOURCE
from tests.helpers import TASKS_RUNNER, work

pytestmark = pytest.mark.django_db(transaction=True)


def test_compat_module_picks_the_framework_of_this_django() -> None:
    import django

    assert ("django.tasks" if django.VERSION >= (6, 0) else "django_tasks") == SOURCE


def test_start_enqueues_a_task_that_a_worker_runs(tasks_runner: Any) -> None:
    assert isinstance(tasks_runner, TasksRunner)
    started = service.start("tests.echo", {"via": "tasks"})
    assert Action.objects.get(pk=started.action.pk).status == "pending"
    assert DBTaskResult.objects.count() == 1
    work()
    action = Action.objects.get(pk=started.action.pk)
    assert action.status == "succeeded"
    assert action.response == {"echo": {"via": "tasks"}}


def test_duplicate_delivery_runs_the_action_once(tasks_runner: Any) -> None:
    started = service.start("tests.logs", {"count": 1})
    for _ in range(3):  # the same message delivered again and again
        tasks_runner.dispatch(started.action.pk)
    assert DBTaskResult.objects.count() == 4
    work()
    action = Action.objects.get(pk=started.action.pk)
    assert action.status == "succeeded"
    assert action.attempt == 1
    assert [entry["message"] for entry in action.log] == ["line 0"]


def test_delayed_dispatch_uses_run_after(tasks_runner: Any) -> None:
    started = service.start("tests.echo")
    when = timezone.now() + timedelta(hours=1)
    DBTaskResult.objects.all().delete()
    tasks_runner.dispatch_at(started.action.pk, when)
    task = DBTaskResult.objects.get()
    assert abs((task.run_after - when).total_seconds()) < 1


def test_start_inside_a_rolled_back_transaction_enqueues_nothing(tasks_runner: Any) -> None:
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        service.start("tests.echo")
        raise RuntimeError("roll back")
    assert DBTaskResult.objects.count() == 0
    assert Action.objects.count() == 0


def test_task_for_an_unknown_or_finished_action_is_a_no_op(tasks_runner: Any) -> None:
    done = Action.objects.create(handler="tests.echo", status="succeeded")
    run_action.using(backend="default").enqueue(str(done.pk))
    work()
    assert Action.objects.get(pk=done.pk).status == "succeeded"


def test_check_reports_a_missing_backend_alias() -> None:
    with override_settings(ASYNC_ACTIONS={**TASKS_RUNNER, "TASKS_BACKEND": "nope"}):
        reset_runner()
        messages = list(get_runner().check())
    reset_runner()
    assert [m.id for m in messages] == ["async_actions.E020"]
    assert "'nope'" in messages[0].msg


@pytest.mark.parametrize(
    ("handler", "status"),
    [("tests.boom", "failed"), ("tests.user_error", "failed"), ("tests.echo", "succeeded")],
)
def test_worker_logs_how_the_action_ended_and_returns_it_as_the_task_result(
    tasks_runner: Any, caplog: Any, handler: str, status: str
) -> None:
    """The Tasks framework logs state=SUCCESSFUL for a task whose action failed; our own
    line and the task's return value say what happened to the action."""
    started = service.start(handler)
    with caplog.at_level("INFO", logger="async_actions"):
        work()
    assert Action.objects.get(pk=started.action.pk).status == status
    ours = [r.getMessage() for r in caplog.records if r.name == "async_actions"]
    assert f"Action {started.action.pk}: {status}" in ours
    task = DBTaskResult.objects.get()
    assert task.return_value == status
