"""Run actions in Celery workers (the ``celery`` extra).

The app ships one Celery task, ``async_actions.run_action``, carrying an action's id;
the runner sends it after the transaction that created the action commits. As on the
TasksRunner, the row and not the message is the source of truth: the task claims the row
with one conditional UPDATE, so a message Celery delivers again (``acks_late``, a lost
worker's message restored) runs nothing a second time.

What Celery adds: a handler's ``queue`` and ``priority`` go on its message (unset, the
project's ``task_routes`` decide; a router function sees the handler's name in the
``handler`` keyword argument); ``run_after`` becomes the
message's ``eta``; a pending action's cancel revokes its message; a handler's time limit
becomes the message's hard ``time_limit`` (``time_limit`` + ``TIME_LIMIT_GRACE`` +
:data:`HARD_KILL_MARGIN`), which the prefork pool enforces by killing the child process,
so a handler that ignores cancellation is stopped (docs/deploy.md says what each pool
does).

Workers find these tasks with ``app.autodiscover_tasks()`` (``async_actions.tasks``), the
way Celery's Django guide sets an app up; the web processes send with the app that guide
loads in the project's ``__init__.py``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from functools import partial
from typing import Any
from uuid import UUID

from celery import Task, current_app, shared_task
from celery.exceptions import TimeLimitExceeded
from celery.signals import worker_ready
from django.core import checks
from django.db import DatabaseError, close_old_connections, router, transaction
from django.db.models import Q
from django.utils import timezone

from async_actions import executor, lifecycle, recovery
from async_actions.conf import action_settings
from async_actions.handlers import get_handler
from async_actions.models import Action
from async_actions.runners import get_runner
from async_actions.runners.base import BaseRunner
from async_actions.supervisor import time_limit_error

__all__ = ["HARD_KILL_MARGIN", "TASK_NAME", "CeleryRunner", "run_action"]

logger = logging.getLogger("async_actions")

TASK_NAME = "async_actions.run_action"
#: Seconds between the supervisor failing a handler past its grace and Celery's hard
#: limit: the action's own "Time limit exceeded" is written first, then the child dies.
HARD_KILL_MARGIN = 1.0

PENDING = Action.Status.PENDING


class ActionTask(Task):  # type: ignore[misc]  # Celery ships no type information
    """The task class of ``run_action``: records a hard time limit on the action.

    On a hard time limit the prefork pool calls ``on_failure`` in the worker's main
    process just before it kills the child, so the action is failed with its time limit
    at once instead of after ``STALE_AFTER`` (the sweep's "worker lost").
    """

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if isinstance(exc, TimeLimitExceeded) and args:
            _fail_timed_out(str(args[0]), exc)


@shared_task(  # type: ignore[untyped-decorator]
    base=ActionTask,
    name=TASK_NAME,
    bind=True,
    # Acknowledge after the body: a message whose worker died is delivered again, and
    # the claim decides whether anything runs.
    acks_late=True,
    reject_on_worker_lost=True,
    # The row holds the outcome; nothing to store in a result backend.
    ignore_result=True,
)
def run_action(self: Task, action_id: str, handler: str = "") -> str | None:
    """Execute the action if it is still pending; its final status, or None.

    ``handler`` (the action's handler name) is for the project's routers and monitoring.
    """
    status = executor.execute(action_id, runner=get_runner())
    if status is None:
        _forget_message(action_id, self.request.id)
    return status


def _forget_message(action_id: str, task_id: str | None) -> None:
    """This message was taken without running the action (not due, a busy key, an
    owner at the cap): the row no longer names a message a queue holds, so recovery
    sends another if nothing wakes it."""
    if not task_id:
        return
    try:
        Action.objects.primary().filter(pk=action_id, status=PENDING, task_id=task_id).update(
            task_id=""
        )
    except DatabaseError:
        close_old_connections()


def _fail_timed_out(action_id: str, exc: TimeLimitExceeded) -> None:
    """Fail the still-running action whose child Celery is killing for its hard limit."""
    try:
        row = Action.objects.primary().filter(pk=action_id).values("handler").first()
        if row is None:
            return
        handler = get_handler(row["handler"])
        limit = handler.get_time_limit() if handler is not None else None
        if limit is None:  # a worker-wide --time-limit, not the handler's own
            limit = float(exc.args[0]) if exc.args else 0.0
        lifecycle.fail_lost(
            UUID(action_id),
            Q(status=Action.Status.RUNNING),
            time_limit_error(limit),
            timezone.now(),
        )
    except DatabaseError:  # the sweep fails it later ("worker lost")
        logger.exception("Could not fail action %s after its hard time limit", action_id)
        close_old_connections()


@worker_ready.connect(dispatch_uid="async_actions.celery.worker_ready")  # type: ignore[untyped-decorator]
def _sweep_in_worker(**kwargs: Any) -> None:
    """A Celery worker sweeps from its start (in the main process), as
    ``async_actions_worker`` does for django-tasks-db."""
    recovery.start_periodic(sweep_now=True)


class CeleryRunner(BaseRunner):
    """Sends ``async_actions.run_action`` through the project's Celery app.

    The id of the message carrying a pending action is stored on its row (``task_id``)
    before it is sent; a worker that takes the message without running the action
    clears it. Recovery treats a pending action whose row names a message as held by the
    broker, so a backlog waiting for busy workers is never sent twice.
    """

    #: ``run_after`` and retry delays become the message's ``eta``.
    supports_defer = True
    #: Pending actions naming a message are held by the broker (``holds``).
    can_hold = True

    def dispatch(self, action_id: UUID) -> None:
        self._send(action_id, None)

    def dispatch_at(self, action_id: UUID, when: datetime) -> None:
        self._send(action_id, when)

    def message_id_for_start(self) -> str:
        """Chosen before the start's INSERT, which stores it: the row names the message
        before it is sent, so a worker that takes it at once finds it."""
        return str(uuid.uuid4())

    def dispatch_after_commit(
        self, action_id: UUID, when: datetime | None = None, action: Any = None
    ) -> None:
        """Send what the start just inserted (its handler, ``run_after`` and message id)
        once it commits, without reading the row again or writing the id after it."""
        if action is None or not action.task_id:
            super().dispatch_after_commit(action_id, when, action)
            return
        eta_from = when or action.run_after
        transaction.on_commit(
            partial(self._publish, action_id, action.handler, action.task_id, eta_from),
            using=router.db_for_write(Action),
        )

    def _send(self, action_id: UUID, when: datetime | None) -> None:
        if not self.accepting:
            return
        try:
            row = (
                Action.objects.primary()
                .filter(pk=action_id, status=PENDING)
                .values("handler", "run_after")
                .first()
            )
            if row is None:
                return  # ended or claimed meanwhile: nothing to run
            task_id = str(uuid.uuid4())
            # Stored before the send, so a worker that takes the message at once finds it.
            Action.objects.primary().filter(pk=action_id, status=PENDING).update(task_id=task_id)
        except DatabaseError:
            logger.exception("Could not dispatch action %s; recovery will retry", action_id)
            close_old_connections()
            return
        self._publish(action_id, row["handler"], task_id, _eta(when, row["run_after"]))

    def _publish(
        self, action_id: UUID, handler: str, task_id: str, eta_from: datetime | None
    ) -> None:
        """Send the message ``task_id``, which the pending row already names."""
        if not self.accepting:
            _forget_message(str(action_id), task_id)  # not sent: recovery sends it
            return
        # Without ``async_actions.startup()`` this process sweeps from its first dispatch.
        recovery.start_periodic()
        options = self.message_options(handler, _eta(eta_from, None))
        try:
            run_action.apply_async(
                (str(action_id),), {"handler": handler}, task_id=task_id, **options
            )
        except Exception:
            # The row stays pending and names no message; recovery sends it again.
            logger.exception("Could not send action %s to Celery; recovery will retry", action_id)
            _forget_message(str(action_id), task_id)

    def message_options(self, handler_name: str, eta: datetime | None = None) -> dict[str, Any]:
        """``apply_async`` options for an action of ``handler_name``: its routing, its
        hard time limit, and ``eta``. Unset routing is left to Celery's ``task_routes``."""
        options: dict[str, Any] = {}
        if eta is not None:
            options["eta"] = eta
        found = get_handler(handler_name)
        if found is None:
            return options  # the worker fails it: "No handler named ..."
        for name in ("queue", "priority"):
            value = getattr(found.options, name)
            if value is not None:
                options[name] = value
        limit = found.get_time_limit()
        if limit is not None:
            grace = float(action_settings.TIME_LIMIT_GRACE)
            options["time_limit"] = float(limit) + grace + HARD_KILL_MARGIN
        return options

    def discard(self, action_id: UUID) -> None:
        """Revoke the message of a pending action just cancelled, so no worker takes it."""
        try:
            ref = (
                Action.objects.primary()
                .filter(pk=action_id)
                .values_list("task_id", flat=True)
                .first()
            )
            if ref:
                run_action.app.control.revoke(ref)
        except Exception:  # the claim refuses a cancelled action anyway
            logger.warning("Could not revoke the message of action %s", action_id, exc_info=True)

    def holds(self, action_ids: Iterable[UUID]) -> set[UUID]:
        """Pending actions whose row names a message no worker has taken yet.

        Celery cannot say whether a broker still has a message, so one that was sent is
        trusted: with ``acks_late`` a worker that dies holding it gives it back.
        """
        return set(
            Action.objects.primary()
            .filter(pk__in=list(action_ids), status=PENDING)
            .exclude(task_id="")
            .values_list("pk", flat=True)
        )

    def check(self) -> Iterable[checks.CheckMessage]:
        app = current_app
        if not app.conf.broker_url:
            yield checks.Warning(
                "The CeleryRunner sends through Celery's current app, which has no broker_url.",
                hint=(
                    "Load your Celery app in your project's __init__.py as Celery's Django "
                    "guide shows, with CELERY_BROKER_URL in settings."
                ),
                id="async_actions.W021",
            )


def _eta(when: datetime | None, run_after: datetime | None) -> datetime | None:
    """The later of a requested delay and the row's ``run_after``, if in the future."""
    times = [t for t in (when, run_after) if t is not None]
    latest = max(times) if times else None
    return latest if latest is not None and latest > timezone.now() else None
