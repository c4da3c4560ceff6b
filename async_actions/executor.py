"""Running one action: claim the row, call the handler, store the outcome.

Every runner ends here, so an action behaves the same in a thread pool and in a
Django Tasks worker on another machine.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import traceback as tb
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.core.files.base import File
from django.db import DatabaseError, close_old_connections, connections
from django.utils import timezone
from django.utils.translation import gettext, gettext_noop

from async_actions import dispatcher, lifecycle, transactions
from async_actions.conf import action_settings
from async_actions.context import ActionCancelled, ActionContext, ActionError, _current
from async_actions.files import add_file
from async_actions.handlers import get_handler
from async_actions.loop import EscapedBaseException, action_loop
from async_actions.models import Action
from async_actions.payloads import PayloadError, check_payload, clean_text
from async_actions.progress import ProgressError, Publisher
from async_actions.retries import retry_later
from async_actions.signals import action_started
from async_actions.supervisor import supervisor, time_limit_error

if TYPE_CHECKING:
    from async_actions.dispatcher import Dispatcher
    from async_actions.handlers import ActionHandler

logger = logging.getLogger("async_actions")

#: Stored errors are English msgids, translated (into the active language, the site's
#: LANGUAGE_CODE in a worker) when they are written: see docs/i18n.md.
UNEXPECTED_ERROR = gettext_noop("The action failed because of an unexpected error.")
BASE_EXCEPTION_ERROR = gettext_noop("The action failed: its handler raised {name}.")
LEFT_OPEN_ERROR = gettext_noop(
    "The action failed: its handler left a database transaction open, and what it "
    "wrote in it was rolled back."
)


def claim(action_id: UUID | str) -> Action | None:
    """Move the action from pending to running; None if this caller did not win it.

    See :func:`async_actions.lifecycle.claim`, which also tells whether it waits.
    """
    return lifecycle.claim(action_id)[0]


def execute(
    action_id: UUID | str,
    *,
    runner: Dispatcher | None = None,
    on_abandon: Callable[[], None] | None = None,
) -> str | None:
    """Run the action if it is still pending; return its final status (None if not run).

    ``runner`` is the runner calling (it passes itself): an action delivered too early
    or a retry is dispatched on it. None means the process's dispatcher
    (:mod:`async_actions.dispatcher`).

    ``on_abandon`` is called (from another thread) if the handler outlives its hard time
    limit, so the runner can replace the thread that is stuck in it.
    """
    keep_connection_if_healthy()
    try:
        action, key_busy = lifecycle.claim(action_id)
        if action is None and not key_busy:  # a busy key's holder wakes it when done
            _not_claimed(action_id, runner or dispatcher.current())
    except DatabaseError:
        logger.exception("Could not claim action %s; it stays pending", action_id)
        close_old_connections()
        return None
    if action is None:
        return None
    try:
        return run_claimed(action, runner=runner, on_abandon=on_abandon)
    finally:
        keep_connection_if_healthy(ping=False)


#: A connection used this recently by the thread is not pinged before a claim.
PING_AFTER_IDLE = 1.0
_last_action = threading.local()


def keep_connection_if_healthy(*, ping: bool = True) -> None:
    """Keep this thread's database connections from one action to the next, unless broken.

    Runner threads and task workers are not requests. ``close_old_connections`` with the
    default ``CONN_MAX_AGE`` of 0 closes after every action, so every claim reconnected:
    1 to 8 ms on SQLite (with its pragmas), about 5 ms to PostgreSQL, most of the start
    latency. A connection that saw an error is closed as before; with ``ping`` (before a
    claim) one that fails its ping too, if it sat idle for ``PING_AFTER_IDLE`` seconds
    or more: a server may have dropped it meanwhile. A worker busy with one action after
    another (its connection proven a moment ago) saves that round trip per action.
    A connection a handler left with autocommit off is closed too (its open transaction
    rolled back), as ``close_old_connections`` does: kept, it would hold every later
    claim and finish of this thread in a transaction that never commits.
    """
    now = time.monotonic()
    idle = now - getattr(_last_action, "ended", -PING_AFTER_IDLE) >= PING_AFTER_IDLE
    if not ping:
        _last_action.ended = now
    for conn in connections.all(initialized_only=True):
        if conn.connection is None or conn.in_atomic_block:
            continue
        left_open = conn.get_autocommit() != conn.settings_dict["AUTOCOMMIT"]
        if conn.errors_occurred or left_open or (ping and idle and not conn.is_usable()):
            conn.close()


def _not_claimed(action_id: UUID | str, runner: Dispatcher) -> None:
    """Make sure a pending action that could not be claimed is not forgotten.

    Delivered before its ``run_after``: dispatch it again then. Behind an older action
    waiting for a free key: wake the oldest (its dispatch may have been lost).
    """
    row = (
        Action.objects.primary()
        .filter(pk=action_id, status=Action.Status.PENDING)
        .values("run_after", "concurrency_key")
        .first()
    )
    if row is None:
        return
    if row["run_after"] is not None and row["run_after"] > timezone.now():
        runner.dispatch_at(UUID(str(action_id)), row["run_after"])
    elif row["concurrency_key"]:
        lifecycle.wake_next(row["concurrency_key"])


def _call(handler: ActionHandler, ctx: ActionContext, publisher: Publisher) -> Any:
    """Call the handler; a coroutine it returns (``async def``) runs on the action loop."""
    result = handler.handle(ctx)
    if inspect.isawaitable(result):
        publisher.inline_writes = False
        result = action_loop.run(ctx, result)
    return result


def run_claimed(
    action: Action,
    *,
    runner: Dispatcher | None = None,
    on_abandon: Callable[[], None] | None = None,
) -> str:
    """Run the handler of a claimed action and record its outcome through the lifecycle
    (a retry is dispatched on ``runner``, see :func:`execute`)."""
    publisher = Publisher(action)
    ctx = ActionContext(action, publisher)
    supervisor.register(ctx, publisher)
    token = _current.set(ctx)
    status, response, error, trace = Action.Status.SUCCEEDED, None, "", ""
    handler: ActionHandler | None = None
    retry: Exception | None = None
    escaped: BaseException | None = None
    before = transactions.snapshot()
    try:
        action_started.send(sender=Action, action=action)
        handler = get_handler(action.handler)
        if handler is None:
            raise ActionError(
                gettext("No handler named %(name)s is available in this worker.")
                % {"name": repr(action.handler)}
            )
        supervisor.start_clock(action.pk, handler.get_time_limit(), on_abandon=on_abandon)
        response = _checked_response(_kept(action, _call(handler, ctx, publisher)))
    except ActionCancelled:
        status, error = Action.Status.CANCELLED, ctx.cancel_error
    except EscapedBaseException as exc:  # an async handler's, carried off the loop
        escaped = exc.original
        status, error, trace = _base_failure(escaped, action)
    except Exception as exc:
        if handler is not None and not ctx.cancelled and handler.should_retry(exc, action.attempt):
            retry = exc
        else:
            status, error, trace = _failure(exc, action)
    except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit, ...: see below
        escaped = exc
        status, error, trace = _base_failure(exc, action)
    finally:
        _current.reset(token)
        limit = supervisor.stop_clock(action.pk)
        left_open = transactions.close_left_open(before)
    if left_open:
        logger.error(
            "The handler of action %s (%s) left a transaction open on %s; it was rolled back",
            action.pk,
            action.handler,
            ", ".join(left_open),
        )
        if status == Action.Status.SUCCEEDED and retry is None:
            status, response = Action.Status.FAILED, None
            error = gettext(LEFT_OPEN_ERROR)
    if retry is not None and handler is not None:
        return _retry(action, handler, publisher, retry, runner)
    return _finish(action, publisher, status, response, error, trace, limit)


def _retry(
    action: Action,
    handler: ActionHandler,
    publisher: Publisher,
    exc: Exception,
    runner: Dispatcher | None,
) -> str:
    """Put a failed attempt back to wait for its next one: PENDING, or RUNNING when
    another party ended the row first (it decided the outcome; nothing is written)."""
    try:
        if retry_later(action, handler, publisher, exc, runner=runner):
            return Action.Status.PENDING
    finally:
        supervisor.unregister(action.pk)
    return Action.Status.RUNNING  # not written: whoever ended the row decided


def _finish(
    action: Action,
    publisher: Publisher,
    status: str,
    response: Any,
    error: str,
    trace: str,
    limit: float | None,
) -> str:
    """Record the outcome of an attempt that will not be retried, and return its status.

    A cancel caused by the time limit is a failure; only a success keeps its response."""
    if limit is not None and status == Action.Status.CANCELLED:
        status, error = Action.Status.FAILED, time_limit_error(limit)
    if status != Action.Status.SUCCEEDED:
        response = None
    # An exception's text may hold NULs or lone surrogates, or be huge: never let the
    # final write fail on it, or the action would stay running with its heartbeat on.
    error, trace = clean_text(error, ERROR_LENGTH), clean_text(trace, TRACE_LENGTH)
    try:
        lifecycle.finish(
            publisher,
            status,
            response=response,
            error=error,
            traceback=trace,
            retry_for=float(action_settings.STALE_AFTER),
            action=action,
        )
    finally:
        supervisor.unregister(action.pk)
    return status


#: Bounds on the stored error (shown to the user) and traceback (shown to staff).
ERROR_LENGTH = 10_000
TRACE_LENGTH = 100_000


def _failure(exc: Exception, action: Action) -> tuple[Action.Status, str, str]:
    """Status, user-facing error and (staff-only) traceback for an exception."""
    trace = "".join(tb.format_exception(exc))
    if isinstance(exc, ActionError):  # clean_text: a str() that raises gives a placeholder
        return Action.Status.FAILED, clean_text(exc) or gettext(UNEXPECTED_ERROR), trace
    if isinstance(exc, ProgressError):
        return Action.Status.FAILED, clean_text(exc), trace
    logger.error("Action %s (%s) failed", action.pk, action.handler, exc_info=exc)
    return Action.Status.FAILED, gettext(UNEXPECTED_ERROR), trace


def _base_failure(exc: BaseException, action: Action) -> tuple[Action.Status, str, str]:
    """A BaseException from a handler ends its action as failed, never its runner thread."""
    name = type(exc).__name__
    logger.error(
        "Action %s (%s) failed: %s was raised", action.pk, action.handler, name, exc_info=exc
    )
    error = gettext(BASE_EXCEPTION_ERROR).format(name=name)
    return Action.Status.FAILED, error, "".join(tb.format_exception(exc))


def _stops_process(exc: BaseException) -> bool:
    """Whether the exception goes on up once the action is recorded failed.

    Only ``KeyboardInterrupt`` and ``SystemExit`` in the main thread: there they are also
    how Ctrl-C and signal handlers stop the process (db_worker's second Ctrl-C raises
    ``SystemExit`` inside the running task), and swallowing them would leave a worker
    that cannot be stopped. Signals never reach other threads, so in a runner thread the
    handler raised it and nothing goes further. db_worker itself survives a task's
    ``SystemExit``: it records the task failed and takes the next one.
    """
    return isinstance(exc, KeyboardInterrupt | SystemExit) and (
        threading.current_thread() is threading.main_thread()
    )


def _kept(action: Action, response: Any) -> Any:
    """A ``File`` a handler returns is kept as the action's result file; the response
    names it (``{"file": name}``)."""
    if isinstance(response, File):
        stored = add_file(action.pk, response.name or "result", response)
        return {"file": stored.name}
    return response


def _checked_response(response: Any) -> Any:
    limit = int(action_settings.MAX_RESPONSE_BYTES)
    try:
        check_payload(response, "The handler's result", limit=limit, setting="MAX_RESPONSE_BYTES")
    except PayloadError as exc:
        raise ActionError(str(exc)) from None
    return response
