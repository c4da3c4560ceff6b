"""Shared fixtures. Tests needing PostgreSQL, Redis or Chromium skip with a reason when
the service is missing, unless ``AA_REQUIRE_SERVICES=1`` (set by .ci/run) makes that a
failure."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

REQUIRE_SERVICES = os.environ.get("AA_REQUIRE_SERVICES") == "1"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need(available: bool, reason: str) -> None:
    """Skip (or, under AA_REQUIRE_SERVICES=1, fail) when a service is missing."""
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (AA_REQUIRE_SERVICES=1 forbids skipping)")
    pytest.skip(reason)


def redis_available() -> bool:
    return _reachable(os.environ.get("AA_REDIS_HOST", "127.0.0.1"), 6379)


def postgres_available() -> bool:
    return _reachable(os.environ.get("AA_PG_HOST", "127.0.0.1"), 5432)


def chromium_path() -> str | None:
    return (
        os.environ.get("AA_CHROMIUM")
        or shutil.which("chromium")
        or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    )


@pytest.fixture
def require_redis() -> None:
    need(redis_available(), "Redis is not reachable on 127.0.0.1:6379")


@pytest.fixture
def require_postgres() -> None:
    need(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


@pytest.fixture
def runner(transactional_db: None) -> Iterator[Any]:
    """A fresh ThreadRunner for the test, shut down (nothing left running) afterwards."""
    from async_actions import runners

    runners.reset_runner()
    instance = runners.get_runner()
    yield instance
    runners.reset_runner()
