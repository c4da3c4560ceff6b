"""Starts that race never pass a limit together, whichever limit it is.

Each limit a start is counted against is counted under its own lock (PostgreSQL's
advisory lock for that owner, SQLite's write lock): a user's, an anonymous session's
(``MAX_ACTIVE_PER_OWNER``) and an address's (``MAX_ACTIVE_PER_ANONYMOUS_ADDRESS``). A
lock on one owner does not guard another's count: one session posting from many
addresses (a phone moving between networks, a rotating proxy) must not pass its
session's limit because each start took a different address's lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import override_settings

from async_actions import service
from async_actions.models import Action
from async_actions.runners import reset_runner

pytestmark = pytest.mark.django_db(transaction=True)

STARTS = 6


def race(start: Callable[[int], Any], **limits: Any) -> list[service.OpStatus]:
    """``STARTS`` threads call ``start(i)`` at once; their answers."""
    barrier = threading.Barrier(STARTS)
    results: list[service.OpStatus] = []

    def one(i: int) -> None:
        try:
            barrier.wait()
            results.append(start(i).status)
        finally:
            connections.close_all()

    options = {**settings.ASYNC_ACTIONS, "RUNNER": "tests.helpers.Recording", **limits}
    with override_settings(ASYNC_ACTIONS=options):
        reset_runner()
        try:
            threads = [threading.Thread(target=one, args=(i,)) for i in range(STARTS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        finally:
            reset_runner()
    assert len(results) == STARTS
    return results


def accepted_once(results: list[service.OpStatus]) -> None:
    assert results.count(service.OpStatus.OK) == 1, results
    assert results.count(service.OpStatus.LIMIT_REACHED) == STARTS - 1, results
    assert Action.objects.count() == 1


def test_one_session_from_many_addresses_passes_its_limit_once() -> None:
    results = race(
        lambda i: service.start("tests.echo", session_key="roamer", client_address=f"10.0.0.{i}"),
        MAX_ACTIVE_PER_OWNER=1,
        MAX_ACTIVE_PER_ANONYMOUS_ADDRESS=None,
    )
    accepted_once(results)


def test_one_address_with_many_sessions_passes_its_limit_once() -> None:
    results = race(
        lambda i: service.start("tests.echo", session_key=f"s{i}", client_address="10.0.0.9"),
        MAX_ACTIVE_PER_OWNER=None,
        MAX_ACTIVE_PER_ANONYMOUS_ADDRESS=1,
    )
    accepted_once(results)


def test_both_anonymous_limits_at_once_each_hold() -> None:
    """Session and address limits together: the locks are always taken in one order,
    so racing starts of crossing owners wait instead of deadlocking."""
    results = race(
        lambda i: service.start(
            "tests.echo", session_key=f"s{i % 2}", client_address=f"10.0.1.{i // 2}"
        ),
        MAX_ACTIVE_PER_OWNER=1,
        MAX_ACTIVE_PER_ANONYMOUS_ADDRESS=1,
    )
    # Two sessions, three addresses, each start sharing a session with two others and an
    # address with one: at most one accepted per session and per address.
    rows = list(Action.objects.values_list("session_key", "client_address"))
    assert results.count(service.OpStatus.OK) == len(rows) >= 1
    assert len({session for session, _address in rows}) == len(rows)
    assert len({address for _session, address in rows}) == len(rows)
    assert service.OpStatus.DB_FAILED not in results


def test_one_user_passes_the_limit_once() -> None:
    user = get_user_model().objects.create_user("racer", password="pw")
    results = race(
        lambda i: service.start("tests.echo", user=user, client_address=f"10.0.2.{i}"),
        MAX_ACTIVE_PER_OWNER=1,
    )
    accepted_once(results)
