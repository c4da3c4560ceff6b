"""Retries: a ``retry_on`` exception sends the action back to pending for another try."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from async_actions import executor, service
from async_actions.checks import check_settings
from async_actions.handlers import HandlerError, get_handler, handler
from async_actions.models import Action
from async_actions.signals import action_retrying
from tests import capability_actions as caps
from tests.helpers import wait_finished, wait_for

pytestmark = pytest.mark.django_db  # `runner` makes a test transactional (docs/architecture.md)


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    caps.events.clear()
    yield


@pytest.fixture
def retried() -> Iterator[list[dict[str, Any]]]:
    """The row as stored each time an action went back to pending."""
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, action: Action, exception: BaseException, run_after: Any, **kw: Any):
        seen.append(
            {
                "status": action.status,
                "attempt": action.attempt,
                "percent": action.percent,
                "message": action.message,
                "data": action.data,
                "seq": action.seq,
                "run_after": action.run_after,
                "exception": type(exception).__name__,
            }
        )

    action_retrying.connect(receiver)
    yield seen
    action_retrying.disconnect(receiver)


def test_retryable_failure_runs_again_until_it_succeeds(runner, retried):
    started = service.start("caps.flaky", {"fail_times": 2})
    action = wait_finished(started.action.pk)
    assert action.status == "succeeded", action.traceback
    assert action.attempt == 3
    assert action.response == {"attempt": 3}
    assert [e[1] for e in caps.events if e[0] == "attempt"] == [1, 2, 3]
    notes = [entry["message"] for entry in action.log]
    assert notes == [
        "Attempt 1 of 3 failed (FlakyService); retrying in 0 s.",
        "Attempt 2 of 3 failed (FlakyService); retrying in 0 s.",
    ]
    assert "upstream timeout" not in str(action.log), "exception text is for staff only"


def test_progress_restarts_cleanly_between_attempts_while_seq_keeps_rising(runner, retried):
    started = service.start("caps.flaky", {"fail_times": 1})
    action = wait_finished(started.action.pk)
    assert action.status == "succeeded"
    (requeued,) = retried
    assert requeued["status"] == "pending"
    assert requeued["attempt"] == 1
    assert (requeued["percent"], requeued["message"], requeued["data"]) == (0.0, "", None)
    assert requeued["exception"] == "FlakyService"
    assert started.action.seq < requeued["seq"] < action.seq


def test_action_fails_once_its_attempts_are_used_up(runner, retried):
    started = service.start("caps.flaky", {"fail_times": 5})
    action = wait_finished(started.action.pk)
    assert action.status == "failed"
    assert action.attempt == 3
    assert len(retried) == 2
    assert action.error == "The action failed because of an unexpected error."
    assert "upstream timeout on attempt 3" in action.traceback


def test_exception_not_listed_in_retry_on_fails_at_once(runner, retried):
    started = service.start("caps.flaky_wrong_error")
    action = wait_finished(started.action.pk)
    assert (action.status, action.attempt) == ("failed", 1)
    assert retried == []


def test_backoff_is_stored_on_the_row_and_respected_by_the_executor(runner, retried):
    started = service.start("caps.flaky_slow")
    pk = started.action.pk
    wait_for(lambda: retried)
    action = Action.objects.get(pk=pk)
    assert (action.status, action.attempt) == ("pending", 1)
    delay = (action.run_after - timezone.now()).total_seconds()
    assert 250 < delay <= 300
    # A delivery before run_after (a restart's recovery, a duplicate) does not run it.
    assert executor.execute(pk) is None
    assert Action.objects.get(pk=pk).status == "pending"
    # Once it is due, it runs.
    Action.objects.filter(pk=pk).update(run_after=timezone.now() - timedelta(seconds=1))
    assert executor.execute(pk) == "succeeded"
    action = Action.objects.get(pk=pk)
    assert (action.status, action.attempt, action.response) == ("succeeded", 2, "second time lucky")


def test_an_action_waiting_to_retry_can_be_cancelled(runner, retried):
    started = service.start("caps.flaky_slow")
    wait_for(lambda: retried)
    assert service.cancel(started.action.pk) is service.OpStatus.OK
    assert Action.objects.get(pk=started.action.pk).status == "cancelled"


def test_retry_delay_doubles_per_attempt_up_to_the_cap():
    flaky = get_handler("caps.flaky_slow")
    assert [flaky.retry_delay(n) for n in (1, 2, 3)] == [300, 600, 600]  # RETRY_BACKOFF_MAX caps
    handler(
        "caps.backoff", max_attempts=9, retry_on=KeyError, retry_backoff=2, retry_backoff_max=10
    )(lambda ctx: None)
    assert [get_handler("caps.backoff").retry_delay(n) for n in range(1, 6)] == [2, 4, 8, 10, 10]


def test_retry_backoff_defaults_come_from_settings(settings):
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "RETRY_BACKOFF": 5, "RETRY_BACKOFF_MAX": 12}
    handler("caps.default_backoff", max_attempts=4, retry_on=KeyError)(lambda ctx: None)
    assert [get_handler("caps.default_backoff").retry_delay(n) for n in (1, 2, 3)] == [5, 10, 12]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry_on": KeyError}, "retry_on has no effect with max_attempts=1"),
        ({"retry_on": "KeyError", "max_attempts": 2}, "retry_on must be an exception class"),
        ({"retry_on": (KeyError, 3), "max_attempts": 2}, "retry_on must be an exception class"),
        ({"max_attempts": 0}, "max_attempts must be a whole number"),
        ({"retry_on": KeyError, "max_attempts": 2, "retry_backoff": -1}, "retry_backoff must"),
    ],
)
def test_bad_retry_options_are_refused_at_registration(options, message):
    with pytest.raises(HandlerError, match=message):
        handler("caps.bad_retry", **options)(lambda ctx: None)


@pytest.mark.parametrize("key", ["RETRY_BACKOFF", "RETRY_BACKOFF_MAX"])
def test_negative_backoff_settings_fail_the_system_check(settings, key):
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, key: -1}
    assert [m.id for m in check_settings() if key in m.msg] == ["async_actions.E003"]
