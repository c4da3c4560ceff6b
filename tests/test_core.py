"""The core engine: handlers, the service API and its OpStatus answers, the context,
coalesced progress, signals and system checks, against a real database and runner."""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from async_actions import handlers, lifecycle, service
from async_actions.context import ActionContext
from async_actions.handlers import HandlerError, handler, perform
from async_actions.models import Action
from async_actions.payloads import PayloadError
from async_actions.service import OpStatus
from async_actions.signals import action_finished, action_started
from tests import actions as test_actions
from tests.helpers import Recording, recording_settings, running_action, wait_finished, wait_for

pytestmark = pytest.mark.django_db  # `runner` makes a test transactional (docs/architecture.md)


# -- handlers ---------------------------------------------------------------------------


def test_two_handlers_with_one_name_are_a_configuration_error() -> None:
    with pytest.raises(HandlerError, match=re.escape("Two handlers are named 'tests.echo'")):

        @handler("tests.echo")
        def another_echo(ctx: ActionContext) -> None: ...

    assert handlers.get_handler("tests.echo").source == "tests.actions.echo"


def test_handler_needs_a_name() -> None:
    with pytest.raises(HandlerError, match="with a name"):
        handler(test_actions.echo)  # type: ignore[arg-type]
    with pytest.raises(HandlerError, match="non-empty"):
        handler("  ")(lambda ctx: None)


def _nested_factory() -> Any:
    def nested() -> None: ...

    return nested


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (lambda: None, "cannot run a lambda"),
        (_nested_factory(), "cannot run the nested function"),
        (str.upper, "module-level function"),
        (test_actions.Doubler().handle, "module-level function"),
    ],
)
def test_perform_refuses_what_a_worker_could_not_import(func: Any, message: str) -> None:
    with pytest.raises(HandlerError, match=message):
        perform(func)
    assert Action.objects.count() == 0


def test_perform_refuses_arguments_that_are_not_json() -> None:
    with pytest.raises(PayloadError, match=re.escape("Arguments to tests.actions.add")):
        perform(test_actions.add, object(), 2)
    with pytest.raises(TypeError):  # PayloadError is a TypeError too
        perform(test_actions.add, {1, 2}, 2)
    assert Action.objects.count() == 0


def test_perform_runs_an_importable_function_with_its_arguments(runner: Any) -> None:
    result = perform(test_actions.add, 2, b=3, session_key="s")
    assert result.status is OpStatus.OK
    action = wait_finished(result.action.pk)
    assert action.handler == "tests.actions.add"
    assert action.request == {"args": [2], "kwargs": {"b": 3}}
    assert (action.status, action.response) == ("succeeded", 5)


def test_start_without_a_name_asks_each_handler_can_handle(runner: Any) -> None:
    result = service.start(request={"double": 21}, session_key="s")
    assert result.status is OpStatus.OK
    assert result.action.handler == "tests.doubler"
    assert wait_finished(result.action.pk).response == 42
    assert service.start(request={"nobody": "takes this"}).status is OpStatus.NO_HANDLER


def test_unknown_and_non_public_names_answer_no_handler(runner: Any) -> None:
    assert service.start("no.such.handler", session_key="s").status is OpStatus.NO_HANDLER
    # A dotted path is imported only for trusted callers, never for client input.
    trusted = service.start("tests.actions.add", {"args": [1, 1], "kwargs": {}}, session_key="s")
    assert trusted.status is OpStatus.OK
    handlers.unregister("tests.actions.add")
    client = service.start("tests.actions.add", {}, session_key="s", public_only=True)
    assert client.status is OpStatus.NO_HANDLER
    assert Action.objects.count() == 1


# -- service operations -----------------------------------------------------------------


def test_operations_on_missing_or_malformed_ids_answer_not_found(recording: Recording) -> None:
    for pk in (uuid.uuid4(), "not-a-uuid", None, 12):
        assert service.update_progress(pk, 10) is OpStatus.NOT_FOUND
        assert service.complete(pk, {}) is OpStatus.NOT_FOUND
        assert service.fail(pk, "x") is OpStatus.NOT_FOUND
        assert service.cancel(pk) is OpStatus.NOT_FOUND


def test_a_terminal_action_never_changes_again(recording: Recording) -> None:
    action = service.start("tests.echo", {"a": 1}, session_key="s").action
    assert service.complete(action.pk, {"done": True}) is OpStatus.OK
    before = Action.objects.get(pk=action.pk)
    assert (before.status, before.percent, before.response) == ("succeeded", 100, {"done": True})
    assert service.update_progress(action.pk, 5, "late") is OpStatus.ACTION_COMPLETED
    assert service.complete(action.pk, {"again": 1}) is OpStatus.ACTION_COMPLETED
    assert service.fail(action.pk, "late failure") is OpStatus.ACTION_COMPLETED
    assert service.cancel(action.pk) is OpStatus.ACTION_COMPLETED
    after = Action.objects.get(pk=action.pk)
    for field in ("status", "percent", "message", "response", "error", "seq", "finished_at"):
        assert getattr(after, field) == getattr(before, field), field


def test_update_progress_validates_and_bumps_seq(recording: Recording) -> None:
    action = service.start("tests.echo", session_key="s").action
    assert service.update_progress(action.pk, 40, "forty", {"n": 40}) is OpStatus.OK
    row = Action.objects.get(pk=action.pk)
    assert (row.percent, row.message, row.data, row.seq) == (40, "forty", {"n": 40}, 1)
    for bad in (math.nan, math.inf, -1, 100.5, "lots"):
        with pytest.raises(ValueError):
            service.update_progress(action.pk, bad)
    assert Action.objects.get(pk=action.pk).seq == 1


def test_fail_and_cancel_of_pending_actions(recording: Recording) -> None:
    failed = service.start("tests.echo", session_key="s").action
    assert service.fail(failed.pk, "upstream said no") is OpStatus.OK
    row = Action.objects.get(pk=failed.pk)
    assert (row.status, row.error) == ("failed", "upstream said no")
    assert row.expires_at is not None
    cancelled = service.start("tests.echo", session_key="s").action
    assert service.cancel(cancelled.pk) is OpStatus.OK
    assert Action.objects.get(pk=cancelled.pk).status == "cancelled"


@pytest.mark.django_db(transaction=True)
def test_dispatch_waits_for_the_transaction_to_commit(recording: Recording) -> None:
    from django.db import transaction

    with transaction.atomic():
        action = service.start("tests.echo", session_key="s").action
        assert recording.dispatched == []  # a worker must not look for an uncommitted row
    assert recording.dispatched == [action.pk]


@pytest.mark.django_db(transaction=True)
def test_idempotency_key_returns_the_unfinished_action_of_the_same_owner(
    recording: Recording, django_user_model: Any
) -> None:
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    first = service.start("tests.echo", user=alice, idempotency_key="import-7")
    again = service.start("tests.echo", user=alice, idempotency_key="import-7")
    assert (first.created, again.created) == (True, False)
    assert again.action.pk == first.action.pk
    other_owner = service.start("tests.echo", user=bob, idempotency_key="import-7")
    assert other_owner.created and other_owner.action.pk != first.action.pk
    service.complete(first.action.pk)
    after_finish = service.start("tests.echo", user=alice, idempotency_key="import-7")
    assert after_finish.created and after_finish.action.pk != first.action.pk
    assert recording.dispatched == [first.action.pk, other_owner.action.pk, after_finish.action.pk]


@pytest.mark.django_db(transaction=True)
def test_an_idempotency_key_reused_for_other_work_is_refused(recording: Recording) -> None:
    """A repeat must be the same start: the same handler and the same request, compared
    as stored (a tuple is the list it is stored as, key order does not count)."""
    first = service.start(
        "tests.echo", {"rows": [1, 2], "a": 1}, session_key="s", idempotency_key="k"
    )
    same = service.start(
        "tests.echo", {"a": 1, "rows": (1, 2)}, session_key="s", idempotency_key="k"
    )
    assert (same.status, same.action.pk, same.created) == (OpStatus.OK, first.action.pk, False)
    other_request = service.start("tests.echo", {"rows": [3]}, session_key="s", idempotency_key="k")
    other_handler = service.start(
        "tests.wait", {"rows": [1, 2], "a": 1}, session_key="s", idempotency_key="k"
    )
    for refused in (other_request, other_handler):
        assert (refused.status, refused.action, refused.ok) == (OpStatus.KEY_REUSED, None, False)
    assert Action.objects.count() == 1
    assert recording.dispatched == [first.action.pk]


@pytest.mark.django_db(transaction=True)
def test_idempotent_starts_racing_on_postgres_create_one_action(recording: Recording) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the race needs concurrent writers (AA_TEST_DB=postgres)")
    barrier = threading.Barrier(8)
    results: list[Any] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(service.start("tests.echo", session_key="race", idempotency_key="k"))
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {r.status for r in results} == {OpStatus.OK}
    assert len({r.action.pk for r in results}) == 1
    assert Action.objects.filter(idempotency_key="k").count() == 1


def test_start_after_shutdown_answers_shutdown_in_progress(runner: Any) -> None:
    runner.shutdown(timeout=0)
    result = service.start("tests.echo", session_key="s")
    assert result.status is OpStatus.SHUTDOWN_IN_PROGRESS
    assert result.action is None
    assert Action.objects.count() == 0


def test_a_real_database_error_answers_db_failed_and_writes_nothing(recording: Recording) -> None:
    table = Action._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE "{table}" RENAME TO "{table}_away"')
    try:
        result = service.start("tests.echo", session_key="s")
        assert (result.status, result.action) == (OpStatus.DB_FAILED, None)
        assert service.cancel(uuid.uuid4()) is OpStatus.DB_FAILED
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'ALTER TABLE "{table}_away" RENAME TO "{table}"')
    assert Action.objects.count() == 0
    assert recording.dispatched == []


# -- the handler's context ----------------------------------------------------------------


def test_set_progress_refuses_nan_infinities_and_out_of_range(recording: Recording) -> None:
    action, publisher = running_action()
    ctx = ActionContext(action, publisher)
    for bad in (math.nan, math.inf, -math.inf, -0.1, 100.01, "half", [50]):
        with pytest.raises(ValueError, match="percent must be a number from 0 to 100"):
            ctx.set_progress(bad)
    ctx.set_progress(0)
    ctx.set_progress(100.0)


def test_set_progress_makes_no_query_between_database_intervals(recording: Recording) -> None:
    action, publisher = running_action()
    ctx = ActionContext(action, publisher)
    ctx.set_progress(1, "first")  # the first call writes
    with CaptureQueriesContext(connection) as queries:
        for i in range(1000):
            ctx.set_progress(i / 10, f"step {i}")
    assert len(queries) == 0
    assert publisher.snapshot()["seq"] == action.seq + 1001


@recording_settings(PROGRESS_DB_INTERVAL=0.2)
def test_progress_writes_are_coalesced_to_the_interval() -> None:
    action, publisher = running_action()
    ctx = ActionContext(action, publisher)
    calls = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        ctx.set_progress(calls % 100, "busy")
        calls += 1
    # One write per 0.2 s window (plus the first), however many calls there were.
    assert calls > 10_000
    assert 4 <= publisher.writes <= 7
    assert lifecycle.finish(publisher, "succeeded", response=calls)
    row = Action.objects.get(pk=action.pk)
    assert (row.status, row.percent, row.response) == ("succeeded", 100, calls)
    assert row.seq == action.seq + calls + 1  # every change counted, the final one too


def test_the_log_keeps_the_newest_records_up_to_log_limit(runner: Any, settings: Any) -> None:
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "LOG_LIMIT": 3}
    result = service.start("tests.logs", {"count": 10}, session_key="s")
    action = wait_finished(result.action.pk)
    assert [entry["message"] for entry in action.log] == ["line 7", "line 8", "line 9"]
    assert {entry["level"] for entry in action.log} == {"INFO"}


def test_outcomes_of_a_handler(runner: Any) -> None:
    ok = wait_finished(service.start("tests.progress", {"steps": 4}, session_key="s").action.pk)
    assert (ok.status, ok.percent, ok.response, ok.message) == ("succeeded", 100, 4, "step 4")
    boom = wait_finished(service.start("tests.boom", session_key="s").action.pk)
    assert boom.status == "failed"
    assert "RuntimeError" in boom.traceback  # kept for staff
    assert "/etc/passwd" not in boom.error  # users see a generic message
    user_error = wait_finished(service.start("tests.user_error", session_key="s").action.pk)
    assert (user_error.status, user_error.error) == ("failed", "Row 3 is not a number")
    bad = wait_finished(service.start("tests.bad_response", session_key="s").action.pk)
    assert bad.status == "failed"
    assert "not JSON" in bad.error or "JSON" in bad.error


def test_cancel_reaches_a_running_handler(runner: Any) -> None:
    pk = service.start("tests.wait", {"gate": "core-cancel"}, session_key="s").action.pk
    wait_for(lambda: Action.objects.filter(pk=pk, status="running").exists())
    assert service.cancel(pk) is OpStatus.OK
    action = wait_finished(pk)
    assert action.status == "cancelled"
    assert action.percent == 10  # where it stopped; only success sets 100


def test_signals_are_sent_with_the_stored_row(runner: Any) -> None:
    seen: list[tuple[str, str, str]] = []

    def on_started(sender: Any, action: Action, **kwargs: Any) -> None:
        seen.append(("started", action.status, action.handler))

    def on_finished(sender: Any, action: Action, status: str, **kwargs: Any) -> None:
        seen.append(("finished", status, action.handler))

    action_started.connect(on_started)
    action_finished.connect(on_finished)
    try:
        pk = service.start("tests.echo", {"x": 1}, session_key="s").action.pk
        wait_finished(pk)
        wait_for(lambda: len(seen) == 2)
    finally:
        action_started.disconnect(on_started)
        action_finished.disconnect(on_finished)
    assert seen == [("started", "running", "tests.echo"), ("finished", "succeeded", "tests.echo")]


# -- settings and checks ------------------------------------------------------------------


def _check_ids(**overrides: Any) -> set[str]:
    with override_settings(ASYNC_ACTIONS=overrides):
        return {m.id for m in run_checks() if m.id and m.id.startswith("async_actions.")}


@pytest.mark.parametrize(
    "overrides",
    [
        {"MAX_WORKERS": 0},
        {"PROGRESS_DB_INTERVAL": -1},
        {"LOG_LIMIT": "many"},
        {"HEARTBEAT_INTERVAL": 10, "STALE_AFTER": 5},
        {"NO_SUCH_SETTING": 1},
        {"RUNNER": "no.such.Runner"},
    ],
)
def test_invalid_settings_are_reported_by_system_checks(overrides: dict[str, Any]) -> None:
    ids = _check_ids(**overrides)
    assert ids, f"{overrides} passed the checks"


def test_the_default_settings_pass_the_checks() -> None:
    assert _check_ids() == set()


WITHOUT_DAPHNE = [app for app in settings.INSTALLED_APPS if app != "daphne"]
TASKS_RUNNER_PATH = "async_actions.runners.tasks.TasksRunner"


@pytest.mark.parametrize(
    ("site", "warned"),
    [
        ({"INSTALLED_APPS": WITHOUT_DAPHNE, "ASGI_APPLICATION": None}, True),  # plain WSGI
        ({"INSTALLED_APPS": WITHOUT_DAPHNE}, False),  # uvicorn & co. with ASGI_APPLICATION
        ({"ASGI_APPLICATION": None}, False),  # runserver with daphne
        ({"INSTALLED_APPS": WITHOUT_DAPHNE, "ASGI_APPLICATION": None, "RUN": True}, False),
        ({"INSTALLED_APPS": WITHOUT_DAPHNE, "ASGI_APPLICATION": None, "RUNNER": 1}, False),
    ],
    ids=["wsgi", "asgi-app", "daphne", "run-without-startup", "tasks-runner"],
)
def test_a_thread_runner_site_that_no_asgi_server_serves_is_warned_about(
    site: dict[str, Any], warned: bool
) -> None:
    """W011: over WSGI nothing calls startup(), so the thread runner never runs an action."""
    site = dict(site)
    extra: dict[str, Any] = {"RUN_WITHOUT_STARTUP": bool(site.pop("RUN", False))}
    if site.pop("RUNNER", None):
        extra["RUNNER"] = TASKS_RUNNER_PATH
    with override_settings(**site, ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, **extra}):
        messages = [m for m in run_checks() if m.id == "async_actions.W011"]
    assert bool(messages) is warned
    if warned:
        assert "SILENCED_SYSTEM_CHECKS" in (messages[0].hint or "")


def test_model_indexes_cover_the_queries_the_engine_makes() -> None:
    indexed = {tuple(index.fields) for index in Action._meta.indexes}
    assert any(fields[0] == "status" for fields in indexed)
    assert any(fields[:1] == ("user",) for fields in indexed)
    assert any("expires_at" in fields for fields in indexed)
    assert any("heartbeat_at" in fields for fields in indexed)
