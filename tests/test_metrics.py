"""Prometheus metrics (async_actions.metrics) and the admin's queue page.

Real actions run on the thread runner, then the endpoint is scraped as Prometheus would
(through its own text parser): counters by handler and outcome, histograms, gauges from
the database; the documented protections refuse strangers; the package works without
prometheus_client and says what is missing when the endpoint is mounted.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import Client, override_settings
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from prometheus_client.parser import text_string_to_metric_families

from async_actions import service
from async_actions.metrics.collectors import registry
from async_actions.metrics.views import bearer_token_required
from async_actions.models import Action
from async_actions.runners import reset_runner
from async_actions.runners.tasks import run_action
from tests.actions import gate
from tests.helpers import TASKS_RUNNER, wait_finished, wait_for
from tests.servers import ROOT, free_port
from tests.urls import METRICS_TOKEN

pytestmark = pytest.mark.django_db

SCRAPE = {"HTTP_AUTHORIZATION": f"Bearer {METRICS_TOKEN}"}
QUEUE = "/admin/async_actions/action/queue/"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: Client | None = None) -> Samples:
    response = (client or Client()).get("/t/metrics/", **SCRAPE)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# -- the endpoint -----------------------------------------------------------------------


def test_counts_started_and_finished_by_handler_and_outcome_after_real_actions(
    runner: Any,
) -> None:
    before = scrape()
    ok = [service.start("tests.echo", {"n": i}).action.pk for i in range(2)]
    bad = service.start("tests.boom").action.pk
    told = service.start("tests.user_error").action.pk
    for pk in [*ok, bad, told]:
        wait_finished(pk)
    # action_finished (which counts) is sent just after the row is written: wait for it.
    finished_so_far = lambda: sum(  # noqa: E731
        v for (name, _), v in scrape().items() if name == "async_actions_finished_total"
    )
    target = sum(v for (name, _), v in before.items() if name == "async_actions_finished_total")
    wait_for(lambda: finished_so_far() >= target + 4)
    after = scrape()

    assert grew(before, after, "async_actions_started_total", handler="tests.echo") == 2
    assert grew(before, after, "async_actions_started_total", handler="tests.boom") == 1
    finished = "async_actions_finished_total"
    assert grew(before, after, finished, handler="tests.echo", status="succeeded") == 2
    assert grew(before, after, finished, handler="tests.echo", status="failed") == 0
    assert grew(before, after, finished, handler="tests.boom", status="failed") == 1
    assert grew(before, after, finished, handler="tests.user_error", status="failed") == 1
    durations = "async_actions_duration_seconds_count"
    assert grew(before, after, durations, handler="tests.echo", status="succeeded") == 2
    waits = "async_actions_queue_wait_seconds_count"
    assert grew(before, after, waits, handler="tests.echo") == 2
    # Every observation falls in the +Inf bucket; a no-op took under a minute.
    total = "async_actions_duration_seconds_bucket"
    labels = {"handler": "tests.echo", "status": "succeeded"}
    assert grew(before, after, total, **labels, le="+Inf") == 2
    assert grew(before, after, total, **labels, le="60.0") == 2
    assert ("async_actions_push_failures_total", frozenset()) in after


def test_a_pending_action_cancelled_counts_as_cancelled_without_a_duration(runner: Any) -> None:
    before = scrape()
    pk = Action.objects.create(handler="tests.never_run").pk  # not dispatched: stays pending
    service.cancel(pk)
    after = scrape()
    labels = {"handler": "tests.never_run", "status": "cancelled"}
    assert grew(before, after, "async_actions_finished_total", **labels) == 1
    assert grew(before, after, "async_actions_duration_seconds_count", **labels) == 0


@pytest.fixture
def held_gate() -> Iterator[str]:
    name = "metrics-running"
    gate(name).clear()
    yield name
    gate(name).set()


def test_gauges_read_pending_scheduled_running_and_oldest_wait_from_the_database(
    runner: Any, held_gate: str
) -> None:
    now = timezone.now()
    waiting = Action.objects.create(handler="tests.queued")  # never dispatched
    Action.objects.filter(pk=waiting.pk).update(created_at=now - timedelta(seconds=90))
    Action.objects.create(handler="tests.queued")
    Action.objects.create(handler="tests.queued", run_after=now + timedelta(hours=1))
    running = service.start("tests.wait", {"gate": held_gate}).action.pk
    wait_for(lambda: Action.objects.filter(pk=running, status="running").exists())

    samples = scrape()
    assert value(samples, "async_actions_pending", handler="tests.queued") == 2
    assert value(samples, "async_actions_scheduled", handler="tests.queued") == 1
    assert value(samples, "async_actions_running", handler="tests.queued") == 0
    assert value(samples, "async_actions_running", handler="tests.wait") == 1
    oldest = value(samples, "async_actions_oldest_pending_seconds", handler="tests.queued")
    assert 90 <= oldest < 120
    assert (
        "async_actions_oldest_pending_seconds",
        frozenset({("handler", "tests.wait")}),
    ) not in samples

    gate(held_gate).set()
    wait_finished(running)
    assert value(scrape(), "async_actions_running", handler="tests.wait") == 0


def test_the_token_protected_endpoint_refuses_without_the_token() -> None:
    client = Client()
    for headers in (
        {},
        {"HTTP_AUTHORIZATION": "Bearer wrong"},
        {"HTTP_AUTHORIZATION": METRICS_TOKEN},
    ):
        response = client.get("/t/metrics/", **headers)
        assert response.status_code == 401, headers
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert b"async_actions" not in response.content
    assert client.get("/t/metrics/", **SCRAPE).status_code == 200
    assert client.post("/t/metrics/", **SCRAPE).status_code == 405


def test_the_staff_protected_endpoint_sends_others_to_the_login_page() -> None:
    user_model = get_user_model()
    user_model.objects.create_user("plain", password="pw")
    user_model.objects.create_user("ops", password="pw", is_staff=True)
    client = Client()
    assert client.get("/t/metrics-staff/").status_code == 302
    client.login(username="plain", password="pw")
    response = client.get("/t/metrics-staff/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    client.login(username="ops", password="pw")
    response = client.get("/t/metrics-staff/")
    assert response.status_code == 200
    assert b"async_actions_pending" in response.content


def test_an_empty_token_is_a_configuration_error_not_an_open_endpoint() -> None:
    with pytest.raises(ImproperlyConfigured):
        bearer_token_required("")


WITHOUT_PROMETHEUS = """
import sys
sys.modules["prometheus_client"] = None  # as if the metrics extra were not installed
import django
django.setup()
import async_actions.admin, async_actions.service, async_actions.views, async_actions.api.urls
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory
from async_actions.metrics import views
try:
    views.metrics(RequestFactory().get("/metrics/"))
except ImproperlyConfigured as exc:
    print("view:", exc)
try:
    import async_actions.metrics.urls
except ImproperlyConfigured as exc:
    print("urls:", exc)
print("loaded:", sys.modules["prometheus_client"] is not None)
"""


def test_the_package_works_without_prometheus_client_and_the_endpoint_says_what_is_missing(
    tmp_path: Any,
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(ROOT),
        "AA_SQLITE_PATH": str(tmp_path / "db.sqlite3"),
    }
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PROMETHEUS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    hint = 'pip install "django-async-actions[metrics]"'
    assert f"view: async_actions.metrics needs prometheus_client: {hint}." in done.stdout
    assert f"urls: async_actions.metrics needs prometheus_client: {hint}." in done.stdout
    assert "loaded: False" in done.stdout


# -- the admin's queue page ---------------------------------------------------------------


@pytest.fixture
def staff() -> Client:
    get_user_model().objects.create_superuser("boss", "boss@example.com", "pw")
    client = Client()
    client.login(username="boss", password="pw")
    return client


def test_queue_page_shows_pending_running_and_oldest_wait_per_handler_and_worker(
    staff: Client,
) -> None:
    now = timezone.now()
    old = Action.objects.create(handler="tests.report")
    Action.objects.filter(pk=old.pk).update(created_at=now - timedelta(minutes=5))
    Action.objects.create(handler="tests.report")
    Action.objects.create(handler="tests.report", run_after=now + timedelta(hours=1))
    Action.objects.create(handler="tests.done", status="succeeded")
    on_worker = Action.objects.create(handler="tests.import", status="running", started_at=now)
    task = run_action.using(backend="default").enqueue(str(on_worker.pk))
    DBTaskResult.objects.filter(pk=task.id).update(worker_ids=["host-a-worker-3"])
    Action.objects.filter(pk=on_worker.pk).update(task_id=task.id)
    Action.objects.create(handler="tests.import", status="running", started_at=now)  # threads

    response = staff.get(QUEUE)
    assert response.status_code == 200
    handlers = {row["handler"]: row for row in response.context["handlers"]}
    assert set(handlers) == {"tests.report", "tests.import"}  # finished ones are not queued
    report = handlers["tests.report"]
    assert (report["pending"], report["scheduled"], report["running"]) == (2, 1, 0)
    assert 300 <= report["oldest_wait"] < 330
    assert (handlers["tests.import"]["pending"], handlers["tests.import"]["running"]) == (0, 2)
    assert response.context["workers"] == [("", 1), ("host-a-worker-3", 1)]
    page = response.content.decode()
    assert "tests.report" in page and "host-a-worker-3" in page
    assert "not recorded" in page

    changelist = staff.get("/admin/async_actions/action/").content.decode()
    assert f'href="{QUEUE}"' in changelist


def test_queue_page_is_empty_when_nothing_waits(staff: Client) -> None:
    response = staff.get(QUEUE)
    assert response.status_code == 200
    assert "Nothing is pending or running." in response.content.decode()


def test_queue_page_refuses_visitors_users_and_staff_without_view_permission() -> None:
    user_model = get_user_model()
    user_model.objects.create_user("plain", password="pw")
    clerk = user_model.objects.create_user("clerk", password="pw", is_staff=True)
    client = Client()
    response = client.get(QUEUE)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    client.login(username="plain", password="pw")
    response = client.get(QUEUE)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    client.login(username="clerk", password="pw")
    assert client.get(QUEUE).status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="view_action"))
    assert client.get(QUEUE).status_code == 200


# -- a worker's own endpoint ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_worker_serves_the_metrics_of_the_actions_it_ran() -> None:
    def count(samples_text: str | None = None) -> float:
        labels = {"handler": "tests.echo", "status": "succeeded"}
        if samples_text is None:
            return registry.get_sample_value("async_actions_finished_total", labels) or 0.0
        for family in text_string_to_metric_families(samples_text):
            for sample in family.samples:
                if sample.name == "async_actions_finished_total" and sample.labels == labels:
                    return sample.value
        return 0.0

    before = count()
    port = free_port()
    with override_settings(ASYNC_ACTIONS=TASKS_RUNNER):
        reset_runner()
        try:
            pk = service.start("tests.echo").action.pk
            call_command(
                "async_actions_worker", "--batch", "--no-reload", "--no-startup-delay",
                "--interval", "0.05", "-v0", "--metrics-port", str(port),
            )  # fmt: skip
        finally:
            reset_runner()
    assert Action.objects.get(pk=pk).status == "succeeded"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        text = response.read().decode()
    assert count(text) == before + 1
    assert "async_actions_pending" in text
