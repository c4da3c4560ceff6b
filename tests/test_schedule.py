"""Delayed starts (issue 17 item 3): ``run_after`` on every surface, honoured by the
thread runner (its own timer, set again after a restart) and the Tasks runner (the
backend's ``run_after``); a cancel before the time means the action never runs."""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from rest_framework.test import APIClient

from async_actions import recovery, service
from async_actions.models import Action
from async_actions.runners import get_runner, reset_runner
from async_actions.schedule import parse_run_after, run_after_from
from async_actions.service import OpStatus
from tests import actions
from tests.helpers import wait_finished, wait_for, work

pytestmark = pytest.mark.django_db(transaction=True)

DELAY = timedelta(seconds=1.5)


def ran_not_before(pk: Any, run_after: datetime) -> Action:
    """The action once finished: it succeeded, and its one attempt began at its time."""
    done = wait_finished(pk, timeout=20)
    assert (done.status, done.attempt) == ("succeeded", 1)
    assert done.started_at >= run_after
    return done


def _service_start(delay: Any) -> Any:
    return service.start("tests.echo", {"via": "service"}, run_after=delay)


def _service_astart(delay: Any) -> Any:
    return async_to_sync(service.astart)("tests.echo", {"via": "astart"}, run_after=delay)


def _handle_start(delay: Any) -> Any:
    return actions.echo.start({"via": "handle"}, run_after=delay)


def _handle_astart(delay: Any) -> Any:
    return async_to_sync(actions.echo.astart)({"via": "ahandle"}, run_after=delay)


def _perform(delay: Any) -> Any:
    return service.perform(actions.add, args=(2, 3), run_after=delay)


def _aperform(delay: Any) -> Any:
    return async_to_sync(service.aperform)(actions.add, kwargs={"a": 1, "b": 1}, run_after=delay)


SURFACES: dict[str, Callable[[Any], Any]] = {
    "service.start": _service_start,
    "service.astart": _service_astart,
    "Handle.start": _handle_start,
    "Handle.astart": _handle_astart,
    "perform": _perform,
    "aperform": _aperform,
}


@pytest.mark.parametrize("surface", SURFACES.values(), ids=SURFACES.keys())
def test_each_python_surface_delays_the_start_on_the_thread_runner(
    runner: Any, surface: Callable[[Any], Any]
) -> None:
    before = timezone.now()
    result = surface(DELAY)
    assert result.status is OpStatus.OK
    row = Action.objects.get(pk=result.action.pk)
    assert row.status == "pending"
    assert row.run_after >= before + DELAY
    assert row.snapshot()["run_after"] == row.run_after.isoformat()
    ran_not_before(row.pk, row.run_after)


def test_an_aware_datetime_is_kept_as_given(runner: Any) -> None:
    when = (timezone.now() + DELAY).astimezone(timezone.get_fixed_timezone(-300))
    result = service.start("tests.echo", run_after=when)
    row = Action.objects.get(pk=result.action.pk)
    assert row.run_after == when
    ran_not_before(row.pk, when)


def test_a_time_already_past_means_now(runner: Any) -> None:
    result = service.start("tests.echo", run_after=timezone.now() - timedelta(hours=1))
    assert Action.objects.get(pk=result.action.pk).run_after is None
    assert wait_finished(result.action.pk).status == "succeeded"
    negative = service.start("tests.echo", run_after=timedelta(seconds=-5))
    assert Action.objects.get(pk=negative.action.pk).run_after is None


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (datetime(2030, 1, 1, 6, 0), ValueError),  # naive: which zone did it mean?
        ("2030-01-01T06:00:00Z", TypeError),  # text is for the API and the command
        (30, TypeError),
    ],
    ids=["naive", "text", "number"],
)
def test_a_run_after_that_is_no_time_is_refused_and_nothing_is_stored(
    value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="run_after"):
        service.start("tests.echo", run_after=value)
    assert Action.objects.count() == 0


def test_command_line_text_is_an_iso_time_or_a_duration() -> None:
    now = timezone.now()
    soon = parse_run_after("1h30m")
    assert soon is not None
    assert abs((soon - now - timedelta(minutes=90)).total_seconds()) < 5
    assert parse_run_after("2d") - now > timedelta(days=1, hours=23)  # type: ignore[operator]
    with timezone.override("Asia/Tokyo"):  # no offset: the current time zone
        local = parse_run_after("2099-01-31T06:00:00")
    assert local == datetime(2099, 1, 30, 21, 0, tzinfo=timezone.get_fixed_timezone(0))
    assert parse_run_after("2000-01-01T00:00:00+00:00") is None  # past: now
    assert run_after_from(None) is None
    for garbage in ["", "soon", "10x", "2030-13-45T99:00:00"]:
        with pytest.raises(ValueError, match="ISO 8601"):
            parse_run_after(garbage)


# -- cancel before the time -----------------------------------------------------------------


@pytest.fixture
def timer_fired(runner: Any) -> Iterator[threading.Event]:
    """Set once the runner's timer has dispatched an action (after its run_after)."""
    fired = threading.Event()
    original = runner.timers._fire

    def fire(action_id: UUID) -> None:
        original(action_id)
        fired.set()

    runner.timers._fire = fire
    yield fired


def test_cancel_before_the_time_on_the_thread_runner_means_it_never_runs(
    runner: Any, timer_fired: threading.Event
) -> None:
    result = service.start("tests.echo", run_after=timedelta(seconds=1))
    assert service.cancel(result.action.pk) is OpStatus.OK
    assert timer_fired.wait(10)  # the timer went off and was sent to the pool...
    assert runner.wait_idle(10)
    row = Action.objects.get(pk=result.action.pk)
    assert (row.status, row.attempt, row.started_at) == ("cancelled", 0, None)  # ...in vain


def test_the_tasks_runner_enqueues_a_delayed_start_for_its_time(tasks_runner: Any) -> None:
    assert tasks_runner.supports_defer
    result = service.start("tests.echo", {"via": "tasks"}, run_after=timedelta(seconds=2))
    row = Action.objects.get(pk=result.action.pk)
    task = DBTaskResult.objects.get()
    assert task.run_after == row.run_after
    work()  # a worker now finds nothing due
    assert Action.objects.get(pk=row.pk).status == "pending"
    wait_for(lambda: timezone.now() > row.run_after, timeout=10)
    work()
    ran_not_before(row.pk, row.run_after)


def test_cancel_before_the_time_on_the_tasks_runner_means_it_never_runs(
    tasks_runner: Any,
) -> None:
    result = service.start("tests.echo", run_after=timedelta(seconds=1))
    run_after = Action.objects.get(pk=result.action.pk).run_after
    assert service.cancel(result.action.pk) is OpStatus.OK
    wait_for(lambda: timezone.now() > run_after, timeout=10)
    work()  # the task is delivered; the claim finds a cancelled row
    assert DBTaskResult.objects.get().status == "SUCCESSFUL"
    row = Action.objects.get(pk=result.action.pk)
    assert (row.status, row.attempt, row.started_at) == ("cancelled", 0, None)


# -- a restart of the thread runner keeps the time ------------------------------------------


def test_a_new_thread_runner_sets_the_lost_timer_again_at_its_first_sweep(runner: Any) -> None:
    result = service.start("tests.echo", run_after=timedelta(seconds=2))
    pk = result.action.pk
    assert runner.holds([pk]) == {pk}  # a timer in this runner
    reset_runner()  # the process "restarts": its timers are gone, the row keeps the time
    fresh = get_runner()
    assert fresh.holds([pk]) == set()
    assert recovery.sweep().scheduled == [pk]
    assert recovery.sweep().scheduled == []  # held now: not twice
    ran_not_before(pk, Action.objects.get(pk=pk).run_after)


# -- the REST API ----------------------------------------------------------------------------


@pytest.fixture
def api() -> APIClient:
    client = APIClient()
    client.force_authenticate(get_user_model().objects.create_user("sam", password="pw"))
    return client


def post(api: APIClient, body: dict[str, Any]) -> Any:
    return api.post("/api/actions/", json.dumps(body), content_type="application/json")


def test_the_api_starts_an_action_at_its_run_after(api: APIClient, runner: Any) -> None:
    when = (timezone.now() + DELAY).replace(microsecond=0) + timedelta(seconds=1)
    response = post(api, {"handler": "tests.echo", "run_after": when.isoformat()})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "pending"
    assert datetime.fromisoformat(body["run_after"].replace("Z", "+00:00")) == when
    ran_not_before(body["id"], when)


def test_the_api_reads_a_time_without_offset_in_the_sites_zone(api: APIClient, runner: Any) -> None:
    with timezone.override("UTC"):
        response = post(api, {"handler": "tests.echo", "run_after": "2099-06-01T12:00:00"})
    assert response.status_code == 201
    row = Action.objects.get(pk=response.json()["id"])
    assert row.run_after == datetime(2099, 6, 1, 12, tzinfo=timezone.get_fixed_timezone(0))
    assert service.cancel(row.pk) is OpStatus.OK


@pytest.mark.parametrize("value", ["tomorrow", "2030-02-30T10:00:00Z", 12, {"at": 1}])
def test_the_api_answers_400_to_a_run_after_that_is_no_time(
    api: APIClient, runner: Any, value: Any
) -> None:
    response = post(api, {"handler": "tests.echo", "run_after": value})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert body["detail"].startswith("Invalid body. run_after:")
    assert "run_after" in body["errors"]
    assert Action.objects.count() == 0


def test_the_api_starts_at_once_for_a_past_or_null_run_after(api: APIClient, runner: Any) -> None:
    for value in ["2001-01-01T00:00:00Z", None]:
        response = post(api, {"handler": "tests.echo", "run_after": value})
        assert response.status_code == 201
        assert response.json()["run_after"] is None
        assert wait_finished(response.json()["id"]).status == "succeeded"


# -- views: the get_run_after hook and the pending page --------------------------------------


def test_a_views_get_run_after_delays_the_start_and_the_pages_say_when(runner: Any) -> None:
    client = Client()
    before = timezone.now()
    response = client.post(reverse("later_view:initial"), {"seconds": 3600})
    assert response.status_code == 303
    row = Action.objects.get()
    assert row.status == "pending"
    assert row.run_after >= before + timedelta(hours=1)
    page = client.get(response["Location"]).content.decode()
    schedule = re.search(r'<p class="aa-progress__schedule"[^>]*>(.*?)</p>', page, re.S)
    assert schedule is not None and " hidden" not in schedule.group(0).split(">")[0]
    assert f'<time datetime="{row.run_after.isoformat()}"' in schedule.group(1)
    local = timezone.localtime(row.run_after)
    assert html.unescape(schedule.group(1)).startswith("Scheduled for ")
    assert local.strftime("%H:%M") in schedule.group(1) or local.strftime("%-I:%M") in (
        schedule.group(1)
    )
    status = client.get(reverse("later_view:status", kwargs={"pk": row.pk})).json()
    assert status["run_after"] == row.run_after.isoformat()
    client.post(reverse("later_view:cancel", kwargs={"pk": row.pk}))
    assert Action.objects.get().status == "cancelled"


def test_the_default_hook_starts_at_once_and_the_page_shows_no_schedule(runner: Any) -> None:
    client = Client()
    gate("schedule-none").clear()
    response = client.post(reverse("gate_view:initial"), {"gate": "schedule-none"})
    row = Action.objects.get()
    assert row.run_after is None
    page = client.get(response["Location"]).content.decode()
    assert re.search(r'<p class="aa-progress__schedule"[^>]*\shidden>', page)
    gate("schedule-none").set()
    wait_finished(row.pk)


def gate(name: str) -> threading.Event:
    return actions.gate(name)
