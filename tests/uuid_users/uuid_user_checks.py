"""A logged-in user whose pk is a UUID, on the product's limits (run by
tests/test_uuid_user.py with ``--ds=tests.settings_uuid_user``; the name keeps the
outer run, whose user model has an integer pk, from collecting it).

The limits, the running cap and its release bind the user's pk in hand-written SQL:
SQLite stores a UUID as 32 hex digits, so a raw ``uuid.UUID`` failed the start
(DB_FAILED) or matched no row.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client, override_settings

from async_actions import executor, fairness, service
from async_actions.models import Action
from async_actions.runners import reset_runner
from tests.actions import gate
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

#: tests/settings.py's timings with the product's limits (MAX_ACTIVE_PER_OWNER = 10,
#: MAX_RUNNING_PER_OWNER = 2), on the thread runner.
PRODUCT_LIMITS = {
    "HEARTBEAT_INTERVAL": 0.5,
    "STALE_AFTER": 5.0,
    "CANCEL_POLL_INTERVAL": 0.1,
    "SHUTDOWN_TIMEOUT": 2.0,
    "SHUTDOWN_GRACE": 2.0,
    "SWEEP_INTERVAL": 3600.0,
    "MAX_WORKERS": 4,
    "RUN_WITHOUT_STARTUP": True,
}


@pytest.fixture
def limits() -> Iterator[None]:
    override = override_settings(ASYNC_ACTIONS=PRODUCT_LIMITS)
    override.enable()
    reset_runner()
    try:
        yield
    finally:
        reset_runner()
        override.disable()


@pytest.fixture
def user() -> Any:
    created = get_user_model().objects.create_user("uma", password="pw")
    assert isinstance(created.pk, uuid.UUID)
    return created


def test_the_user_model_has_a_uuid_pk() -> None:
    assert get_user_model()._meta.pk.get_internal_type() == "UUIDField"


def test_starts_are_limited_capped_and_released_for_a_uuid_user(limits: None, user: Any) -> None:
    name = f"uuid-{uuid.uuid4()}"
    gate(name).clear()
    try:
        started = [service.start("tests.wait", {"gate": name}, user=user) for _ in range(10)]
        assert [result.status for result in started] == [service.OpStatus.OK] * 10
        refused = service.start("tests.wait", {"gate": name}, user=user)
        assert refused.status is service.OpStatus.LIMIT_REACHED

        ids = [result.action.pk for result in started if result.action is not None]
        wait_for(lambda: Action.objects.filter(status="running").count() == 2)
        waiting = Action.objects.filter(status="pending").order_by("created_at").first()
        assert waiting is not None
        assert executor.execute(waiting.pk) is None  # refused at the cap
        assert Action.objects.filter(status="running", user=user).count() == 2
        assert fairness.backlog(ids[0]) == 9

        gate(name).set()  # every end releases the owner's next waiting action
        wait_for(lambda: Action.objects.filter(pk__in=ids, status="succeeded").count() == 10)
    finally:
        gate(name).set()


def test_a_logged_in_uuid_user_starts_through_the_view(limits: None, user: Any) -> None:
    client = Client(REMOTE_ADDR="198.51.100.21")
    client.force_login(user)
    response = client.post("/t/echo/", {"word": "uuid"})
    assert response.status_code == 303, response.content
    match = re.search(r"[0-9a-f-]{36}", response["Location"])
    assert match is not None
    action = wait_for(lambda: Action.objects.filter(pk=match.group(0)).finished().first())
    assert action.status == "succeeded"
    assert action.user_id == user.pk


def test_the_python_and_sql_lock_keys_of_a_uuid_user_agree(user: Any) -> None:
    """PostgreSQL: the key a start locks (``Owner.lock_sql``) is the one a claim reads
    from the row (``_LOCK_KEY_SQL``), or the two would not serialize."""
    if connection.vendor != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's")
    action = Action.objects.create(handler="tests.echo", user=user)
    with connection.cursor() as cursor:
        table = connection.ops.quote_name(Action._meta.db_table)
        cursor.execute(
            f"SELECT {fairness._LOCK_KEY_SQL}, a.user_id FROM {table} a WHERE a.id = %s",
            [action.pk],
        )
        in_sql, column = cursor.fetchone()
    for owner in (fairness.owner_of(user.pk), fairness.owner_of(column)):
        assert owner is not None
        assert owner.lock_sql()[1][1] == in_sql
