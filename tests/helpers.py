"""Helpers the test modules share: waiting, service probes, the Tasks worker, WebSocket
communicators and browser options.

One place for them, so a test module never imports another test module. Fixtures live in
tests/conftest.py (which re-exports the service probes and ``wait_for`` for older
imports); processes a test starts live in tests/servers.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.core.management import call_command
from django.db import DatabaseError
from django.db.models.signals import pre_save
from django.test import override_settings

from async_actions import service
from async_actions.executor import claim
from async_actions.models import Action
from async_actions.progress import Publisher
from async_actions.runners.base import BaseRunner
from tests.views import GateView

REQUIRE_SERVICES = os.environ.get("AA_REQUIRE_SERVICES") == "1"

# -- waiting ----------------------------------------------------------------------------


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


def wait_finished(pk: Any, timeout: float = 10.0) -> Action:
    """The action ``pk`` once it is succeeded, failed or cancelled; fail after ``timeout``."""
    return wait_for(lambda: Action.objects.filter(pk=pk).finished().first(), timeout=timeout)


# -- services a test may need ------------------------------------------------------------


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


#: Headless Chromium as the browser tests launch it.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, launched through Playwright for one module or test.

    Playwright is imported here, not at the top: the wheel's test session runs without it
    and skips the browser tests before they get this far.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


TIMEOUT_MS = 30_000

# -- the Tasks framework runner -----------------------------------------------------------

#: ``ASYNC_ACTIONS`` selecting the TasksRunner, with the test settings' short intervals.
TASKS_RUNNER = {
    "RUNNER": "async_actions.runners.tasks.TasksRunner",
    "HEARTBEAT_INTERVAL": 0.5,
    "STALE_AFTER": 5.0,
    "SWEEP_INTERVAL": 3600.0,
}


def work(max_tasks: int | None = None) -> None:
    """Run a db_worker in this process until the queue is empty."""
    args = ["db_worker", "--batch", "--no-startup-delay", "--interval", "0.05", "-v0"]
    if max_tasks:
        args += ["--max-tasks", str(max_tasks)]
    call_command(*args)


# -- WebSockets through the project's ASGI application --------------------------------------

#: Seconds a communicator waits for a frame.
TIMEOUT = 10


@sync_to_async
def new_session(user: Any = None) -> str:
    """A saved session (logged in as ``user`` if given); its key is the socket's cookie."""
    store = SessionStore()
    if user is not None:
        store["_auth_user_id"] = str(user.pk)
        store["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        store["_auth_user_hash"] = user.get_session_auth_hash()
    store.save()
    return store.session_key


def communicator(action_id: Any, session_key: str | None) -> WebsocketCommunicator:
    """A same-origin socket on the action's progress URL, with the session's cookie."""
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if session_key:
        headers.append((b"cookie", f"sessionid={session_key}".encode()))
    # Imported here: the ASGI module calls async_actions.startup(), which a test process
    # should do only when a test talks to the application, not when conftest loads.
    from example_project.asgi import application

    return WebsocketCommunicator(application, f"/ws/async-actions/{action_id}/", headers=headers)


@sync_to_async
def make_action(session_key: str = "", **fields: Any) -> Action:
    """An action row of ``GateView``'s handler owned by the session."""
    fields.setdefault("handler", GateView.handler_name())
    return Action.objects.create(session_key=session_key, **fields)


class Recording(BaseRunner):
    """A runner that records dispatches instead of running them: the test drives."""

    def __init__(self) -> None:
        super().__init__()
        self.dispatched: list[uuid.UUID] = []

    def dispatch(self, action_id: uuid.UUID) -> None:
        self.dispatched.append(action_id)


def recording_settings(**extra: Any) -> override_settings:
    """Settings whose runner is a :class:`Recording` (the ``recording`` fixture uses them)."""
    return override_settings(
        ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, "RUNNER": "tests.helpers.Recording", **extra}
    )


def running_action(handler_name: str = "tests.echo") -> tuple[Action, Publisher]:
    """A started and claimed action with its publisher, for tests that drive the context."""
    action = claim(service.start(handler_name, session_key="s").action.pk)
    assert action is not None
    return action, Publisher(action)


@contextlib.contextmanager
def failing_action_inserts() -> Iterator[None]:
    """The database raises as an action's row is written (a full disk, a dropped
    connection), however the start writes it."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise DatabaseError("disk I/O error")

    pre_save.connect(broken, sender=Action, dispatch_uid="tests.failing_action_inserts")
    try:
        yield
    finally:
        pre_save.disconnect(sender=Action, dispatch_uid="tests.failing_action_inserts")
