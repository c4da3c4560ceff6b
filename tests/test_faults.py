"""Faults with real triggers: the database going away at start and mid-action.

PostgreSQL makes the outage real: connections are refused and open ones killed
(``ALLOW_CONNECTIONS false`` + ``pg_terminate_backend``), then the database comes back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from async_actions import service
from async_actions.models import Action
from async_actions.service import OpStatus
from tests.actions import gate
from tests.helpers import need, postgres_available, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


@pytest.fixture
def outage() -> Iterator[Any]:
    """A switch that takes the test database down and brings it back."""
    need(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    if connection.vendor != "postgresql":
        pytest.skip("needs AA_TEST_DB=postgres (an outage of a SQLite file is not real)")
    import psycopg

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params["dbname"] = "postgres"
    admin = psycopg.connect(**params, autocommit=True)
    name = connection.settings_dict["NAME"]

    class Switch:
        def down(self) -> None:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )

        def up(self) -> None:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')

    switch = Switch()
    try:
        yield switch
    finally:
        switch.up()
        admin.close()
        connection.close()


def test_start_while_the_database_is_down_returns_db_failed_and_writes_nothing(
    runner: Any, outage: Any
) -> None:
    outage.down()
    connection.close()
    result = service.start("tests.echo", {"a": 1}, session_key="s")
    assert result.status is OpStatus.DB_FAILED
    assert result.action is None
    outage.up()
    connection.close()
    assert Action.objects.count() == 0


def test_a_short_outage_mid_action_still_ends_with_the_final_state(
    runner: Any, outage: Any
) -> None:
    started = service.start("tests.wait", {"gate": "outage"}, session_key="s")
    assert started.action is not None
    pk = started.action.pk
    wait_for(lambda: Action.objects.filter(pk=pk, status="running").exists())
    outage.down()
    connection.close()
    gate("outage").set()  # the handler returns while the database is down
    time.sleep(1.0)  # the outage lasts a second: the final write must be retried
    outage.up()
    action = wait_for(lambda: Action.objects.filter(pk=pk).finished().first(), timeout=30)
    assert action.status == "succeeded"
    assert action.response == "released"
    # The pool survived: the next action runs normally.
    after = service.start("tests.echo", {"b": 2}, session_key="s")
    assert after.action is not None
    done = wait_for(lambda: Action.objects.filter(pk=after.action.pk).finished().first())
    assert done.status == "succeeded"


def test_progress_writes_during_an_outage_do_not_kill_the_handler(runner: Any, outage: Any) -> None:
    started = service.start("tests.wait", {"gate": "outage-progress"}, session_key="s")
    assert started.action is not None
    pk = started.action.pk
    wait_for(lambda: Action.objects.filter(pk=pk, status="running").exists())
    outage.down()
    connection.close()
    ctx_ready = threading.Event()

    def report() -> None:
        from async_actions.supervisor import supervisor

        ctx = wait_for(lambda: supervisor.local(pk))
        for i in range(50):
            ctx.set_progress(i, f"during outage {i}")
            time.sleep(0.01)
        ctx_ready.set()

    reporter = threading.Thread(target=report)
    reporter.start()
    assert ctx_ready.wait(10)
    reporter.join()
    outage.up()
    with contextlib.suppress(Exception):
        connection.close()
    gate("outage-progress").set()
    action = wait_for(lambda: Action.objects.filter(pk=pk).finished().first(), timeout=30)
    assert action.status == "succeeded"
    assert action.message == "during outage 49"


def test_pages_and_the_api_answer_503_while_the_database_is_down(
    runner: Any, outage: Any, django_user_model: Any
) -> None:
    from django.test import Client
    from django.urls import reverse
    from rest_framework.authtoken.models import Token

    user = django_user_model.objects.create_user("outage", password="pw")
    token = Token.objects.create(user=user).key
    page_client = Client()
    page_client.get(reverse("echo_view:initial"))  # a session, as a real visitor has
    connection.close()
    outage.down()
    try:
        page = page_client.post(reverse("echo_view:initial"), {"word": "x"})
        api = Client().post(
            "/api/actions/",
            {"handler": "tests.echo", "request": {}},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Token {token}",
        )
    finally:
        outage.up()
        connection.close()
    assert page.status_code == 503, page.content[:300]
    assert page["Retry-After"]
    assert b"Traceback" not in page.content and b"psycopg" not in page.content
    assert api.status_code == 503, api.content[:300]
    assert api["Retry-After"]
    assert api.json()["detail"]
    assert "psycopg" not in api.content.decode()
    assert Action.objects.count() == 0
