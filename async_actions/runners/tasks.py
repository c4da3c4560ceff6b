"""Run actions in other processes through Django's Tasks framework.

Any Tasks backend works (the database backend of django-tasks-db, RQ, ...): dispatch
enqueues one small task carrying the action's id, and a worker executes it. The
action's row, not the task, is the source of truth: claiming it is one conditional
UPDATE, so a message delivered twice, or a task re-run after a worker crash, runs the
action at most once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from django.apps import apps
from django.core import checks
from django.db import DatabaseError, connections, router

from async_actions import executor, fairness, recovery
from async_actions.conf import action_settings
from async_actions.models import Action
from async_actions.runners import get_runner
from async_actions.runners.base import BaseRunner
from async_actions.tasks_compat import (
    InvalidTaskBackendError,
    TaskResultDoesNotExist,
    task,
    task_backends,
)

logger = logging.getLogger("async_actions")

#: The Tasks framework's lowest priority (``TASK_MIN_PRIORITY`` in Django 6 and the backport).
LOWEST_PRIORITY = -100


@task()  # type: ignore[untyped-decorator]  # the backport ships no type information
def run_action(action_id: str) -> str | None:
    """The task a worker runs: execute the action if it is still pending."""
    # A worker started without ``async_actions_worker`` sweeps from its first task on.
    recovery.start_periodic()
    outcome = executor.execute(action_id, runner=get_runner())
    # The worker logs the *task's* state, SUCCESSFUL whenever this function returns, also
    # for an action that failed or was cancelled: this line says how the action ended,
    # and the task's result (its return value) is the same status.
    logger.info("Action %s: %s", action_id, _OUTCOME_WORDS.get(outcome, outcome))
    return outcome


#: How ``executor.execute``'s answers read in the worker's log.
_OUTCOME_WORDS: dict[str | None, str] = {
    None: "not run here (already claimed, finished, or not due yet)",
    "pending": "failed, will be retried",
    "running": "ended by someone else while it ran",
}


def _task_ref(result: Any) -> str:
    """The id of an enqueued task as the row's ``task_id`` holds it."""
    return str(getattr(result, "id", "") or "")[:255]


def _remember_task(action_id: UUID, result: Any) -> None:
    """Store the task's id on the still-pending row, for recovery to look it up.

    Hand-written: it runs on every dispatch, and the ORM compiled it anew each time.
    """
    ref = _task_ref(result)
    if not ref:
        return
    conn = connections[router.db_for_write(Action)]
    pk = Action._meta.pk.get_db_prep_value(action_id, conn)
    table = conn.ops.quote_name(Action._meta.db_table)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET task_id = %s WHERE id = %s AND status = %s",
                [ref, pk, str(Action.Status.PENDING)],
            )
    except DatabaseError:  # only recovery's look-up is lost: it enqueues again, at worst
        logger.warning("Could not store task %s of action %s", ref, action_id)


class TasksRunner(BaseRunner):
    """Enqueues on the Tasks backend ``TASKS_BACKEND``, queue ``TASKS_QUEUE``.

    The id of the task carrying a pending action is kept on its row (``task_id``), so
    recovery can ask the backend whether that task is still queued before it enqueues
    another one.
    """

    #: Recovery asks the backend about the task stored on the row (``holds``).
    can_hold = True

    @property
    def supports_defer(self) -> bool:  # type: ignore[override]
        """Whether the Tasks backend delays tasks itself (``run_after``)."""
        backend = self._backend()
        return backend is not None and bool(getattr(backend, "supports_defer", False))

    @property
    def supports_priority(self) -> bool:  # type: ignore[override]
        """Whether the Tasks backend orders tasks by priority."""
        backend = self._backend()
        return backend is not None and bool(getattr(backend, "supports_priority", False))

    def _task(self, **options: Any) -> Any:
        return run_action.using(
            backend=action_settings.TASKS_BACKEND,
            queue_name=action_settings.TASKS_QUEUE,
            **options,
        )

    def dispatch(self, action_id: UUID) -> None:
        if not self.accepting:
            return
        # Without ``async_actions.startup()`` this process sweeps from its first dispatch.
        recovery.start_periodic()
        try:
            result = self._task(**self._fair_priority(action_id)).enqueue(str(action_id))
        except Exception:
            # The row stays pending; recovery dispatches it again.
            logger.exception("Could not enqueue action %s; recovery will retry", action_id)
            return
        _remember_task(action_id, result)

    def enqueues_in_start(self) -> bool:
        """Yes for django-tasks-db writing its tasks to the actions' database, where the
        start's transaction holds the write lock from its first statement (PostgreSQL's
        advisory locks; SQLite only in ``transaction_mode`` IMMEDIATE, else a start that
        counts before it writes can fail on a busy database instead of waiting).
        """
        backend = self._backend()
        if not self.accepting or type(backend).__module__.split(".")[0] != "django_tasks_db":
            return False
        try:
            model = apps.get_model("django_tasks_database", "DBTaskResult")
        except LookupError:
            return False
        alias = router.db_for_write(Action)
        if router.db_for_write(model) != alias:
            return False
        conn = connections[alias]
        options = conn.settings_dict.get("OPTIONS") or {}
        return conn.vendor == "postgresql" or (
            conn.vendor == "sqlite" and str(options.get("transaction_mode", "")) == "IMMEDIATE"
        )

    def enqueue_in_start(self, action_id: UUID, when: datetime | None, backlog: int) -> str:
        """One INSERT into django-tasks-db's table, in the start's transaction.

        A failure other than the database's is logged and the start goes on without a
        task, as :meth:`dispatch` does (recovery enqueues it); the database's own error
        aborts the start, whose transaction is no longer usable anyway.
        """
        recovery.start_periodic()  # as dispatch does
        options = {"run_after": when} if when is not None else self._priority(backlog)
        try:
            return _task_ref(self._task(**options).enqueue(str(action_id)))
        except DatabaseError:
            raise
        except Exception:
            logger.exception("Could not enqueue action %s; recovery will retry", action_id)
            return ""

    def dispatch_at(self, action_id: UUID, when: datetime) -> None:
        recovery.start_periodic()  # as dispatch does, for a process that only delays
        if not self.supports_defer:
            super().dispatch_at(action_id, when)
            return
        try:
            result = self._task(run_after=when).enqueue(str(action_id))
        except Exception:
            logger.exception("Could not enqueue action %s for %s", action_id, when)
            return
        _remember_task(action_id, result)

    def holds(self, action_ids: Iterable[UUID]) -> set[UUID]:
        """Pending actions whose task the backend still has waiting, or running recently.

        A task ``RUNNING`` for longer than ``STALE_AFTER`` while its action is still
        pending lost its worker before the claim, so it no longer counts. A backend that
        cannot look results up is trusted to keep what it accepted. A delayed action
        waiting on this process's timer (a backend without ``supports_defer``) is held.
        """
        action_ids = list(action_ids)
        return self._held_by_backend(action_ids) | super().holds(action_ids)

    def _held_by_backend(self, action_ids: list[UUID]) -> set[UUID]:
        refs = dict(
            Action.objects.primary()
            .filter(pk__in=action_ids)
            .exclude(task_id="")
            .values_list("pk", "task_id")
        )
        backend = self._backend()
        if backend is None or not getattr(backend, "supports_get_result", False):
            return set(refs)
        held: set[UUID] = set()
        cutoff = recovery.stale_before()
        for pk, ref in refs.items():
            try:
                result = backend.get_result(ref)
            except TaskResultDoesNotExist:
                continue  # purged or never stored: dispatch again
            except Exception:
                logger.exception("Could not look up task %s of action %s", ref, pk)
                held.add(pk)  # unknown: do not add a duplicate on every sweep
                continue
            status = str(getattr(result.status, "value", result.status))
            if status == "READY" or (
                status == "RUNNING" and (result.started_at is None or result.started_at > cutoff)
            ):
                held.add(pk)
        return held

    def _fair_priority(self, action_id: UUID) -> dict[str, int]:
        """Behind the actions of owners with less work waiting: the more unfinished
        actions an owner has, the lower the task's priority (see ``fairness``)."""
        if not self.supports_priority:
            return {}
        return self._priority(fairness.backlog(action_id))

    def _priority(self, waiting: int) -> dict[str, int]:
        """The task's priority for an owner with ``waiting`` other unfinished actions."""
        if not waiting or not self.supports_priority:
            return {}
        return {"priority": max(LOWEST_PRIORITY, -waiting)}

    def _backend(self) -> Any:
        try:
            return task_backends[action_settings.TASKS_BACKEND]
        except InvalidTaskBackendError:
            return None

    def check(self) -> Iterable[checks.CheckMessage]:
        alias = action_settings.TASKS_BACKEND
        if self._backend() is None:
            yield checks.Error(
                f"ASYNC_ACTIONS['TASKS_BACKEND'] is {alias!r}, which is not in TASKS.",
                hint="Add it to the TASKS setting or name an existing backend alias.",
                id="async_actions.E020",
            )
            return
        backend = self._backend()
        if type(backend).__name__ == "ImmediateBackend":
            yield checks.Warning(
                f"Tasks backend {alias!r} is the ImmediateBackend: actions run inside the "
                "request that starts them, not in a worker.",
                hint="Use a backend with workers, e.g. django_tasks_db.DatabaseBackend.",
                id="async_actions.W020",
            )
