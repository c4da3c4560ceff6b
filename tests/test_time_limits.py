"""Time limits: soft limit cancels, hard limit fails the action and frees its slot."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from async_actions import service
from async_actions.checks import check_settings
from async_actions.handlers import HandlerError, get_handler, handler
from async_actions.models import Action
from async_actions.runners import get_runner
from tests import capability_actions as caps
from tests.actions import gate, gates
from tests.helpers import wait_finished, wait_for

pytestmark = pytest.mark.django_db  # `runner` makes a test transactional (docs/architecture.md)


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    caps.events.clear()
    gates.clear()
    yield
    for event in gates.values():
        event.set()


@pytest.fixture
def limits(runner: Any, settings: Any) -> Any:
    """A one-thread runner with a short grace, so a stuck handler holds the only slot."""
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "MAX_WORKERS": 1, "TIME_LIMIT_GRACE": 0.2}
    fresh = get_runner()
    assert fresh.max_workers == 1
    return fresh


def test_stuck_handler_past_its_hard_limit_does_not_stop_the_next_action(limits):
    stuck = service.start("caps.stuck", {"gate": "stuck"})
    after = service.start("caps.quick")

    failed = wait_finished(stuck.action.pk)
    assert failed.status == "failed"
    assert failed.error.startswith("Time limit exceeded")
    assert wait_finished(after.action.pk).status == "succeeded"
    assert limits.abandoned_count == 1

    # The abandoned thread finishes late: its result must not replace the failure.
    gate("stuck").set()
    wait_for(lambda: limits.abandoned_count == 0)
    failed_again = Action.objects.get(pk=stuck.action.pk)
    assert failed_again.status == "failed"
    assert failed_again.response is None
    assert failed_again.message != "too late"
    assert failed_again.seq == failed.seq

    # Capacity is intact: one thread, still serving.
    again = service.start("caps.quick")
    assert wait_finished(again.action.pk).status == "succeeded"


def test_handler_that_stops_at_the_soft_limit_fails_with_the_time_limit_error(limits):
    started = service.start("caps.cooperative")
    action = wait_finished(started.action.pk)
    assert action.status == "failed"
    assert action.error == "Time limit exceeded: the action ran longer than 0.2 seconds."
    assert ("saw_cancel", str(action.pk)) in caps.events
    assert not action.cancel_requested, "nobody asked to cancel: the clock did"
    assert limits.abandoned_count == 0


def test_async_handler_gets_cancelled_error_at_its_time_limit(limits):
    started = service.start("caps.async_slow")
    action = wait_finished(started.action.pk)
    assert action.status == "failed"
    assert action.error.startswith("Time limit exceeded")
    assert ("async_limit_cancelled", str(action.pk)) in caps.events
    assert limits.abandoned_count == 0


def test_time_limit_setting_applies_to_handlers_without_their_own(limits, settings):
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "TIME_LIMIT": 0.2}
    started = service.start("tests.wait", {"gate": "never"})
    action = wait_finished(started.action.pk)
    assert (action.status, action.error) == (
        "failed",
        "Time limit exceeded: the action ran longer than 0.2 seconds.",
    )
    assert get_handler("caps.unlimited").get_time_limit() is None
    assert get_handler("caps.stuck").get_time_limit() == 0.2


def test_hard_limit_frees_the_concurrency_key_for_the_next_waiter(limits):
    stuck = service.start("caps.stuck_keyed", {"gate": "keyed"})
    waiter = service.start("caps.keyed_quick")
    assert wait_finished(waiter.action.pk).status == "succeeded"
    assert Action.objects.get(pk=stuck.action.pk).status == "failed"


def test_no_time_limit_by_default(settings):
    assert settings.ASYNC_ACTIONS.get("TIME_LIMIT") is None
    assert get_handler("tests.echo").get_time_limit() is None


@pytest.mark.parametrize(
    ("key", "value"),
    [("TIME_LIMIT", 0), ("TIME_LIMIT", "60"), ("TIME_LIMIT_GRACE", -1), ("TIME_LIMIT_GRACE", None)],
)
def test_bad_time_limit_settings_fail_the_system_check(settings, key, value):
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, key: value}
    messages = [m for m in check_settings() if key in m.msg]
    assert [m.id for m in messages] == ["async_actions.E003"]


@pytest.mark.parametrize("value", [0, -5, "1m", True])
def test_bad_handler_time_limit_is_refused_at_registration(value):
    with pytest.raises(HandlerError, match="time_limit must be seconds"):
        handler("caps.bad_limit", time_limit=value)(lambda ctx: None)
