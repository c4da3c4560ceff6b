"""A site with ``USE_TZ = False`` (times naive, in ``TIME_ZONE``): delayed starts from
Python, the API and the command line, and the pages and admin that show a scheduled
time, work as they do with aware times."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from async_actions import service
from async_actions.models import Action
from async_actions.schedule import parse_run_after, run_after_from
from tests.test_views import action_id_from

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("runner"),
]

NAIVE = override_settings(USE_TZ=False, TIME_ZONE="America/New_York")


@NAIVE
def test_a_naive_time_from_timezone_now_delays_the_start() -> None:
    when = timezone.now() + timedelta(hours=2)  # naive: USE_TZ is off
    result = service.start("tests.echo", run_after=when)
    row = Action.objects.get(pk=result.action.pk)
    assert row.status == Action.Status.PENDING
    assert row.run_after == when


@NAIVE
def test_an_aware_time_becomes_the_same_instant_in_time_zone() -> None:
    when = datetime(2099, 1, 31, 11, 0, tzinfo=UTC)
    assert run_after_from(when) == datetime(2099, 1, 31, 6, 0)  # New York, naive
    assert parse_run_after("2099-01-31T06:00:00") == datetime(2099, 1, 31, 6, 0)
    assert parse_run_after("2000-01-01T00:00:00") is None  # past: now


@NAIVE
def test_the_api_and_the_command_line_start_a_delayed_action() -> None:
    api = APIClient()
    api.force_authenticate(get_user_model().objects.create_user("sam", password="pw"))
    body = {"handler": "tests.echo", "run_after": "2099-01-31T06:00:00"}
    response = api.post("/api/actions/", json.dumps(body), content_type="application/json")
    assert response.status_code == 201, response.content
    assert Action.objects.get(pk=response.json()["id"]).run_after == datetime(2099, 1, 31, 6, 0)
    call_command(
        "async_actions_start",
        "tests.echo",
        "--run-after",
        "2099-01-31T07:00:00",
        "--idempotency-key",
        "nightly-%Y-%m-%d",
    )
    row = Action.objects.get(run_after=datetime(2099, 1, 31, 7, 0))
    assert row.idempotency_key == timezone.now().strftime("nightly-%Y-%m-%d")


@NAIVE
def test_the_processing_page_and_the_admin_show_the_scheduled_time(staff: Client) -> None:
    response = staff.post(reverse("later_view:initial"), {"seconds": 3600})
    pk = action_id_from(response)
    page = staff.get(reverse("later_view:processing", kwargs={"pk": pk}))
    assert page.status_code == 200
    # The script gets an instant (with an offset), not a time it would read as its own.
    stamp = re.search(r'<time datetime="([^"]+)" data-aa="schedule-time"', page.content.decode())
    assert stamp is not None and re.search(r"[+-]\d\d:\d\d$", stamp.group(1))
    admin = staff.get(reverse("admin:async_actions_action_change", args=[pk]))
    assert admin.status_code == 200


@NAIVE
def test_the_status_json_gives_the_page_script_instants(client: Client) -> None:
    """The script reads a time without an offset as the browser's; the stored one is
    naive in TIME_ZONE, so the snapshot names the offset."""
    response = client.post(reverse("later_view:initial"), {"seconds": 3600})
    pk = action_id_from(response)
    state = client.get(reverse("later_view:status", kwargs={"pk": pk})).json()
    row = Action.objects.get(pk=pk)
    assert row.run_after is not None and timezone.is_naive(row.run_after)
    for key in ("run_after", "created_at"):
        assert datetime.fromisoformat(state[key]).utcoffset() is not None, state[key]
    expected = timezone.make_aware(row.run_after, timezone.get_default_timezone())
    assert datetime.fromisoformat(state["run_after"]) == expected
