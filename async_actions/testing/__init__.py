"""Test helpers: run actions inline or capture them, then assert on progress, cancel and
outcome (docs/testing.md).

Like Celery's eager mode or the Tasks framework's immediate and dummy backends, two
runners replace the configured one for a test: :class:`InlineRunner` executes every
started action in the calling thread before ``start()`` returns, and
:class:`CaptureRunner` only records them until the test runs them. Either may also be
the ``RUNNER`` of a test settings module. Both work inside a test's own transaction
(Django's ``TestCase``, pytest-django's ``db``), which never commits: the dispatch that
normally waits for the commit happens at once there.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connections, router
from django.test.utils import override_settings

from async_actions import executor, service
from async_actions.context import ActionContext, progress_observers
from async_actions.models import Action
from async_actions.runners import get_runner
from async_actions.runners.base import BaseRunner
from async_actions.runners.thread import ThreadRunner
from async_actions.signals import action_finished
from async_actions.state import ActionState

__all__ = [
    "ActionsTestMixin",
    "CaptureRunner",
    "InlineRunner",
    "assert_cancelled",
    "assert_failed",
    "assert_progress_seen",
    "assert_succeeded",
    "capture_actions",
    "progress_of",
    "run_captured",
    "run_inline",
    "run_threaded",
    "wait_finished",
]

#: A recorded progress report: the action's state right after it (``events.snapshot``).
Report = dict[str, Any]
_ANY = object()


def _pk(action: Any) -> UUID:
    """The id of an Action, a StartResult, an ActionState, a UUID or its text."""
    if isinstance(action, service.StartResult):
        if action.action is None:
            raise AssertionError(f"The start did not create an action: {action.status.name}.")
        return UUID(str(action.action.pk))
    if isinstance(action, ActionState):
        return action.id
    if isinstance(action, Action):
        return UUID(str(action.pk))
    return UUID(str(action))


def _only_test_transactions() -> bool:
    """Whether the only transactions open are a test case's, which never commit."""
    conn = connections[router.db_for_write(Action)]
    return conn.in_atomic_block and all(
        getattr(block, "_from_testcase", False) for block in conn.atomic_blocks
    )


class _RecordingRunner(BaseRunner):
    """Runs actions in the calling thread on request, recording their progress."""

    runs_in_process = True
    #: ``dispatch_at`` (a retry's backoff) is kept by the runner, no timer thread.
    supports_defer = True

    def __init__(self) -> None:
        super().__init__()
        #: Every action dispatched to this runner, in order (once each).
        self.started: list[UUID] = []
        #: Progress reports per action, in the order the handler made them.
        self.progress: dict[UUID, list[Report]] = {}
        #: Called with each report; when it answers true the action is cancelled, as a
        #: user's cancel does (``service.cancel``).
        self.cancel_when: Callable[[Report], bool] | None = None
        self._queue: list[UUID] = []
        self._running = threading.local()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Nothing to start: no recovery sweeper or shutdown hook in a test."""

    def dispatch_after_commit(
        self, action_id: UUID, when: datetime | None = None, action: Any = None
    ) -> None:
        if not _only_test_transactions():
            super().dispatch_after_commit(action_id, when, action)
        elif when is None:
            self.dispatch(action_id)
        else:
            self.dispatch_at(action_id, when)

    def dispatch(self, action_id: UUID) -> None:
        self._note(UUID(str(action_id)))

    def dispatch_at(self, action_id: UUID, when: datetime) -> None:
        """A retry waits for no clock in a test: its next attempt is due at once."""
        Action.objects.filter(pk=action_id, status=Action.Status.PENDING).update(run_after=None)
        self.dispatch(action_id)

    def _note(self, pk: UUID) -> None:
        with self._lock:
            if pk not in self.started:
                self.started.append(pk)

    def run(self, action: Any) -> ActionState:
        """Run a pending action to its end in this thread; its state afterwards.

        Dispatches its run makes (a retry, the next action waiting for a concurrency
        key) run after it, in the same call.
        """
        pk = _pk(action)
        self._queue.append(pk)
        if not getattr(self._running, "active", False):
            self._drain()
        state = service.get(pk)
        if state is None:
            raise AssertionError(f"No action {pk}.")
        return state

    def _drain(self) -> None:
        self._running.active = True
        try:
            while self._queue:
                self._execute(self._queue.pop(0))
        finally:
            self._running.active = False

    def _execute(self, pk: UUID) -> None:
        progress_observers[pk] = self._observe
        try:
            executor.execute(pk, runner=self)
        finally:
            progress_observers.pop(pk, None)

    def _observe(self, ctx: ActionContext, report: Report) -> None:
        with self._lock:
            self.progress.setdefault(ctx.action_id, []).append(report)
        wanted = self.cancel_when
        if wanted is not None and not ctx.cancelled and wanted(report):
            service.cancel(ctx.action_id)


class InlineRunner(_RecordingRunner):
    """Executes each action in the calling thread as it is dispatched: after the start's
    commit, or at once inside a test's transaction. ``start()`` returns once it ended."""

    def dispatch(self, action_id: UUID) -> None:
        pk = UUID(str(action_id))
        self._note(pk)
        self._queue.append(pk)
        if not getattr(self._running, "active", False):
            self._drain()


class CaptureRunner(_RecordingRunner):
    """Records the actions dispatched to it without running them; :meth:`run_captured`
    runs them (they stay ``pending`` until then, as with a stopped worker)."""

    def run_captured(self) -> list[ActionState]:
        """Run every captured action still pending, in the order they were started, and
        those their runs dispatch; the states of all captured actions afterwards."""
        for pk in list(self.started):
            if Action.objects.filter(pk=pk, status=Action.Status.PENDING).exists():
                self.run(pk)
        return [state for pk in self.started if (state := service.get(pk)) is not None]


@contextlib.contextmanager
def _runner_of(cls: type[_RecordingRunner]) -> Iterator[Any]:
    current = dict(getattr(settings, "ASYNC_ACTIONS", None) or {})
    path = f"{cls.__module__}.{cls.__qualname__}"
    with override_settings(ASYNC_ACTIONS={**current, "RUNNER": path}):
        runner = get_runner()
        if not isinstance(runner, cls):  # pragma: no cover - a settings hook of the site's
            raise RuntimeError(f"The runner is {type(runner).__name__}, not {cls.__name__}.")
        global _latest
        _latest = runner
        yield runner


@contextlib.contextmanager
def run_inline(*, cancel_when: Callable[[Report], bool] | None = None) -> Iterator[InlineRunner]:
    """Within the block, every action started runs to its end before ``start()`` returns.

    ``cancel_when(report)`` cancels an action at the first progress report it accepts
    (``lambda report: report["percent"] >= 50``), so a test can watch a handler stop.
    Yields the runner: ``.started`` (ids), ``.progress`` (reports per id).
    """
    with _runner_of(InlineRunner) as runner:
        runner.cancel_when = cancel_when
        yield runner


@contextlib.contextmanager
def capture_actions(
    *, cancel_when: Callable[[Report], bool] | None = None
) -> Iterator[CaptureRunner]:
    """Within the block, started actions stay pending and are recorded (``.started``);
    ``run_captured()`` (or ``runner.run(action)``) runs them when the test says."""
    with _runner_of(CaptureRunner) as runner:
        runner.cancel_when = cancel_when
        yield runner


@contextlib.contextmanager
def run_threaded(*, shutdown_timeout: float = 5.0) -> Iterator[ThreadRunner]:
    """Within the block, this process runs started actions on the thread runner, as the
    server would: for end-to-end tests (pytest-django's ``live_server``, a browser, a
    WebSocket) that need real concurrency.

    A test process never calls ``async_actions.startup()``, so without this the thread
    runner leaves what a test starts pending for a server that never comes. The actions
    run on their own threads and database connections after the start commits: use a
    test whose transactions commit (``TransactionTestCase``, ``LiveServerTestCase``,
    pytest-django's ``transactional_db`` or ``live_server``). Leaving the block waits up
    to ``shutdown_timeout`` seconds for what still runs, then cancels it, so no handler
    outlives its test.
    """
    current = dict(getattr(settings, "ASYNC_ACTIONS", None) or {})
    path = f"{ThreadRunner.__module__}.{ThreadRunner.__qualname__}"
    threaded = {**current, "RUNNER": path, "RUN_WITHOUT_STARTUP": True}
    with override_settings(ASYNC_ACTIONS=threaded):
        runner = get_runner()
        if not isinstance(runner, ThreadRunner):  # pragma: no cover - a site's settings hook
            raise RuntimeError(f"The runner is {type(runner).__name__}, not ThreadRunner.")
        try:
            yield runner
        finally:
            runner.shutdown(timeout=shutdown_timeout)


#: The runner of the latest ``run_inline()`` / ``capture_actions()`` block: its records
#: stay readable after the block, where assertions usually are.
_latest: _RecordingRunner | None = None


def _recording_runner() -> _RecordingRunner:
    runner = get_runner()
    if isinstance(runner, _RecordingRunner):
        return runner
    if _latest is not None:
        return _latest
    raise AssertionError(
        "Progress is recorded for actions run by run_inline() or capture_actions(); "
        f"the runner is {type(runner).__name__}."
    )


def run_captured() -> list[ActionState]:
    """Run the actions :func:`capture_actions` holds; their states afterwards."""
    runner = _recording_runner()
    if not isinstance(runner, CaptureRunner):
        raise AssertionError("run_captured() runs what capture_actions() captured.")
    return runner.run_captured()


def progress_of(action: Any) -> list[Report]:
    """Every progress report of an action run inline or captured, in order."""
    runner, pk = _recording_runner(), _pk(action)
    if pk not in runner.started:
        raise AssertionError(
            f"Action {pk} was not started under run_inline() or capture_actions(): "
            "its progress was not recorded."
        )
    return list(runner.progress.get(pk, []))


def _state(action: Any) -> ActionState:
    state = service.get(_pk(action))
    if state is None:
        raise AssertionError(f"No action {_pk(action)}.")
    return state


def wait_finished(action: Any, timeout: float = 10.0) -> ActionState:
    """The action's state once it ended, for runners that run it elsewhere (threads, a
    worker); an AssertionError after ``timeout`` seconds."""
    pk = _pk(action)
    ended = threading.Event()

    def on_finished(sender: Any, action: Action, **kwargs: Any) -> None:
        if action.pk == pk:
            ended.set()

    action_finished.connect(on_finished, weak=False)
    deadline = time.monotonic() + timeout
    try:
        while True:
            state = _state(pk)
            if state.finished:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Action {pk} is still {state.status} after {timeout} s "
                    f"({state.percent:.0f} %, {state.message!r})."
                )
            # The signal wakes us for an end in this process; the poll sees other processes'.
            ended.wait(0.05)
    finally:
        action_finished.disconnect(on_finished)


def assert_succeeded(action: Any, response: Any = _ANY) -> ActionState:
    """Assert the action succeeded (with ``response``, if given); its state."""
    state = _state(action)
    if not state.succeeded:
        raise AssertionError(
            f"Action {state.id} ({state.handler}) is {state.status}, not succeeded"
            + (f": {state.error}" if state.error else ".")
        )
    if response is not _ANY and state.response != response:
        raise AssertionError(f"Action {state.id} responded {state.response!r}, not {response!r}.")
    return state


def assert_failed(action: Any, error: str | None = None) -> ActionState:
    """Assert the action failed (with the user's ``error`` message, if given)."""
    state = _state(action)
    if not state.failed:
        raise AssertionError(f"Action {state.id} ({state.handler}) is {state.status}, not failed.")
    if error is not None and state.error != error:
        raise AssertionError(f"Action {state.id} failed with {state.error!r}, not {error!r}.")
    return state


def assert_cancelled(action: Any) -> ActionState:
    """Assert the action was cancelled."""
    state = _state(action)
    if not state.cancelled:
        raise AssertionError(
            f"Action {state.id} ({state.handler}) is {state.status}, not cancelled."
        )
    return state


def assert_progress_seen(
    action: Any, percent: float | None = None, message: str | None = None, data: Any = _ANY
) -> Report:
    """Assert the handler reported progress with all the given fields at some point
    (coalescing never hides a report here); the first matching report."""
    reports = progress_of(action)
    for report in reports:
        if percent is not None and not math.isclose(report["percent"], percent):
            continue
        if message is not None and report["message"] != message:
            continue
        if data is not _ANY and report["data"] != data:
            continue
        return report
    wanted = {
        k: v
        for k, v in {"percent": percent, "message": message, "data": data}.items()
        if v is not None and v is not _ANY
    }
    seen = [(r["percent"], r["message"]) for r in reports]
    raise AssertionError(f"No progress report {wanted} among {len(reports)}: {seen}")


class ActionsTestMixin:
    """For Django ``TestCase`` classes: the helpers as methods and ``assert*`` names.

    ``class ReportTests(ActionsTestMixin, TestCase)``; then ``with
    self.run_actions_inline(): ...`` or ``self.enterContext(run_inline())`` in setUp.
    """

    def run_actions_inline(self, **options: Any) -> contextlib.AbstractContextManager[InlineRunner]:
        return run_inline(**options)

    def capture_actions(self, **options: Any) -> contextlib.AbstractContextManager[CaptureRunner]:
        return capture_actions(**options)

    def run_actions_threaded(
        self, **options: Any
    ) -> contextlib.AbstractContextManager[ThreadRunner]:
        return run_threaded(**options)

    def assertActionSucceeded(self, action: Any, response: Any = _ANY) -> ActionState:
        return assert_succeeded(action, response)

    def assertActionFailed(self, action: Any, error: str | None = None) -> ActionState:
        return assert_failed(action, error)

    def assertActionCancelled(self, action: Any) -> ActionState:
        return assert_cancelled(action)

    def assertProgressSeen(
        self,
        action: Any,
        percent: float | None = None,
        message: str | None = None,
        data: Any = _ANY,
    ) -> Report:
        return assert_progress_seen(action, percent, message, data)
