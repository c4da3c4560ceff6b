"""The runner contract: an abstract base with capability flags, like a Tasks backend."""

from __future__ import annotations

import uuid

import pytest
from django.test import override_settings

from async_actions.runners.base import BaseRunner
from async_actions.runners.celery import CeleryRunner
from async_actions.runners.tasks import TasksRunner
from async_actions.runners.thread import ThreadRunner
from async_actions.tasks_compat import task_backends
from tests.helpers import TASKS_RUNNER


class Minimal(BaseRunner):
    """The least a runner writes: ``dispatch``."""

    def dispatch(self, action_id: uuid.UUID) -> None:
        pass


def test_the_base_refuses_to_build_without_dispatch() -> None:
    with pytest.raises(TypeError, match="dispatch"):
        BaseRunner()  # type: ignore[abstract]

    class NoDispatch(BaseRunner):
        pass

    with pytest.raises(TypeError, match="dispatch"):
        NoDispatch()  # type: ignore[abstract]


def test_a_runner_with_dispatch_has_the_base_capabilities() -> None:
    runner = Minimal()
    assert runner.accepting
    assert not runner.runs_in_process
    assert not runner.supports_defer
    assert not runner.supports_priority
    assert not runner.can_hold
    assert runner.holds([uuid.uuid4()]) == set()
    assert list(runner.check()) == []


def test_the_thread_runner_runs_in_process_and_holds_its_queue() -> None:
    runner = ThreadRunner(max_workers=1)
    try:
        assert runner.runs_in_process
        assert runner.can_hold
        assert not runner.supports_defer  # a retry's delay is a timer in this process
        assert not runner.supports_priority  # first come, first served
    finally:
        runner.close()


def test_the_tasks_runner_takes_defer_and_priority_from_its_backend() -> None:
    with override_settings(ASYNC_ACTIONS=TASKS_RUNNER):
        runner = TasksRunner()
        backend = task_backends["default"]
        assert not runner.runs_in_process
        assert runner.can_hold
        assert runner.supports_defer is bool(backend.supports_defer)
        assert runner.supports_priority is bool(backend.supports_priority)
    with override_settings(ASYNC_ACTIONS={**TASKS_RUNNER, "TASKS_BACKEND": "nope"}):
        runner = TasksRunner()
        assert not runner.supports_defer
        assert not runner.supports_priority


def test_the_celery_runner_defers_with_eta_and_holds_what_it_sent() -> None:
    runner = CeleryRunner()
    assert not runner.runs_in_process
    assert runner.supports_defer  # run_after and retry delays become the message's eta
    assert runner.can_hold  # a pending row naming a message no worker took yet
    assert not runner.supports_priority  # priority is the handler's, not fairness's
