"""Retention: the purge command removes finished actions past retention, in batches."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from async_actions import retention
from async_actions.models import Action

pytestmark = pytest.mark.django_db  # `runner` makes a test transactional (docs/architecture.md)


def rows(count: int, **fields: Any) -> None:
    Action.objects.bulk_create(Action(handler="tests.h", **fields) for _ in range(count))


@pytest.fixture
def mixed() -> None:
    past, future = timezone.now() - timedelta(days=1), timezone.now() + timedelta(days=1)
    rows(25, status="succeeded", expires_at=past, finished_at=past - timedelta(days=40))
    rows(5, status="failed", expires_at=past, finished_at=past)
    rows(4, status="succeeded", expires_at=future, finished_at=timezone.now())
    rows(3, status="running", expires_at=past)  # active: never purged
    rows(2, status="pending")


def test_purge_deletes_expired_finished_actions_only(mixed: None, capsys: Any) -> None:
    call_command("async_actions_purge")
    out = capsys.readouterr().out
    assert "      25  succeeded  tests.h" in out
    assert "       5  failed     tests.h" in out
    assert "Deleted 30 finished actions past their retention." in out
    assert Action.objects.count() == 9
    assert Action.objects.filter(status__in=["running", "pending"]).count() == 5


def test_dry_run_deletes_nothing(mixed: None, capsys: Any) -> None:
    call_command("async_actions_purge", "--dry-run")
    assert "30 finished actions past their retention would be deleted" in capsys.readouterr().out
    assert Action.objects.count() == 39


def test_older_than_uses_finished_at(mixed: None, capsys: Any) -> None:
    call_command("async_actions_purge", "--older-than", "30d")
    assert "Deleted 25 finished actions finished more than 30d ago." in capsys.readouterr().out
    assert Action.objects.count() == 14


@pytest.mark.parametrize("bad", ["soon", "30", "-1d", "3y"])
def test_bad_age_is_a_readable_error(bad: str) -> None:
    with pytest.raises(CommandError, match="not an age"):
        call_command("async_actions_purge", f"--older-than={bad}")


def test_deletes_in_batches_of_the_given_size(mixed: None) -> None:
    with CaptureQueriesContext(connection) as queries:
        batches = list(retention.purge(retention.expired(), batch_size=10))
    assert batches == [10, 10, 10]
    deletes = [q for q in queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3


def test_a_retry_outlives_its_purged_original() -> None:
    past = timezone.now() - timedelta(days=1)
    original = Action.objects.create(handler="h", status="failed", expires_at=past)
    retry = Action.objects.create(handler="h", status="succeeded", retry_of=original)
    call_command("async_actions_purge")
    retry.refresh_from_db()
    assert retry.retry_of is None


def test_every_terminal_path_sets_expires_at(runner: Any) -> None:
    from async_actions import service
    from tests.helpers import wait_for

    done = service.start("tests.echo").action
    failed = service.start("tests.boom").action
    cancelled = service.start("tests.wait", {"gate": "never-opened-purge"}).action
    service.cancel(cancelled.pk)
    for action in (done, failed, cancelled):
        final = wait_for(lambda a=action: Action.objects.filter(pk=a.pk).finished().first())
        assert final.expires_at is not None and final.expires_at > final.finished_at
