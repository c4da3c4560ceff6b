"""Shared fixtures. Tests needing PostgreSQL, Redis or Chromium skip with a reason when
the service is missing, unless ``AA_REQUIRE_SERVICES=1`` (set by .ci/run) makes that a
failure."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.utils import translation

from async_actions import handlers
from async_actions.runners import get_runner, reset_runner
from tests.helpers import (  # noqa: F401  (re-exported: older tests import them from here)
    REQUIRE_SERVICES,
    TASKS_RUNNER,
    Recording,
    chromium_path,
    need,
    postgres_available,
    recording_settings,
    redis_available,
    wait_finished,
    wait_for,
)


@pytest.fixture
def require_redis() -> None:
    need(redis_available(), "Redis is not reachable on 127.0.0.1:6379")


@pytest.fixture
def require_postgres() -> None:
    need(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")


@pytest.fixture
def temporary_handler() -> Iterator[Callable[..., Callable[[Any], Any]]]:
    """``@temporary_handler(name, **options)`` registers a handler for this test only.

    The registry is process-wide: a handler a test registers and leaves behind answers
    every later test that starts that name. This one is unregistered at teardown (only if
    its registration succeeded, so a refused duplicate never removes the original).
    """
    registered: list[str] = []

    def register(name: str, **options: Any) -> Callable[[Any], Any]:
        def decorate(func: Any) -> Any:
            made = handlers.handler(name, **options)(func)
            registered.append(name)
            return made

        return decorate

    yield register
    for name in registered:
        handlers.unregister(name)


@pytest.fixture
def staff(db: None) -> Client:
    """A test client logged in as a superuser ("boss"), for the admin."""
    get_user_model().objects.create_superuser("boss", "boss@example.com", "pw")
    client = Client()
    client.login(username="boss", password="pw")
    return client


@pytest.fixture
def recording() -> Iterator[Recording]:
    """A runner that only records dispatches: the test claims and drives each action."""
    with recording_settings():
        runner = get_runner()
        assert isinstance(runner, Recording)
        yield runner


@pytest.fixture
def runner(transactional_db: None) -> Iterator[Any]:
    """A fresh ThreadRunner for the test, shut down (nothing left running) afterwards."""
    from async_actions import runners

    runners.reset_runner()
    instance = runners.get_runner()
    yield instance
    runners.reset_runner()


@pytest.fixture
def tasks_runner() -> Iterator[Any]:
    """The TasksRunner on django-tasks-db (``tests.helpers.work()`` runs its queue), over
    the test settings (limits off unless a test turns them on), fresh for the test."""
    with override_settings(ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, **TASKS_RUNNER}):
        reset_runner()
        yield get_runner()
    reset_runner()


@pytest.fixture(autouse=True)
def _site_language_after_each_test() -> Iterator[None]:
    """A request through LocaleMiddleware leaves its language active on the thread; the
    next test would write German errors. Each test ends back in LANGUAGE_CODE."""
    yield
    translation.deactivate()
