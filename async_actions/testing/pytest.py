"""pytest fixtures for async_actions: enable with
``pytest_plugins = ["async_actions.testing.pytest"]`` in your top-level conftest.py.

``actions_inline`` runs every action started in the test to its end before ``start()``
returns; ``actions_captured`` records them, pending, until ``.run_captured()``;
``actions_threaded`` runs them on the thread runner's threads, as the server does (for
``live_server`` and browser tests; it needs ``transactional_db``). Each fixture yields
the runner (``.started``, ``.progress``); the assertions are plain functions in
:mod:`async_actions.testing`. They use the database: mark the test ``django_db``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from async_actions.runners.thread import ThreadRunner
    from async_actions.testing import CaptureRunner, InlineRunner


@pytest.fixture
def actions_inline() -> Iterator[InlineRunner]:
    """Actions started in the test run inline (``async_actions.testing.run_inline``)."""
    # Imported here: pytest loads plugins before Django's app registry is ready.
    from async_actions.testing import run_inline

    with run_inline() as runner:
        yield runner


@pytest.fixture
def actions_captured() -> Iterator[CaptureRunner]:
    """Actions started in the test are captured, not run (``capture_actions``)."""
    # Imported here: pytest loads plugins before Django's app registry is ready.
    from async_actions.testing import capture_actions

    with capture_actions() as runner:
        yield runner


@pytest.fixture
def actions_threaded(transactional_db: None) -> Iterator[ThreadRunner]:
    """Actions started in the test run on the thread runner, as in the server
    (``async_actions.testing.run_threaded``); what still runs at the end is cancelled."""
    # Imported here: pytest loads plugins before Django's app registry is ready.
    from async_actions.testing import run_threaded

    with run_threaded() as runner:
        yield runner
