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

from django.core import checks

from async_actions import fairness
from async_actions.conf import action_settings
from async_actions.runners.base import BaseRunner
from async_actions.tasks_compat import InvalidTaskBackendError, task, task_backends

logger = logging.getLogger("async_actions")

#: The Tasks framework's lowest priority (``TASK_MIN_PRIORITY`` in Django 6 and the backport).
LOWEST_PRIORITY = -100


@task()
def run_action(action_id: str) -> str | None:
    """The task a worker runs: execute the action if it is still pending."""
    from async_actions import executor, recovery

    recovery.start_periodic()  # workers also find actions lost by dead workers
    return executor.execute(action_id)


class TasksRunner(BaseRunner):
    """Enqueues on the Tasks backend ``TASKS_BACKEND``, queue ``TASKS_QUEUE``."""

    def __init__(self) -> None:
        super().__init__()
        from async_actions import recovery

        # Web processes sweep too: a worker that dies may leave no worker that has
        # run a task yet, and so none whose sweeper is started.
        recovery.start_periodic()

    def _task(self, **options: Any) -> Any:
        return run_action.using(
            backend=str(action_settings.TASKS_BACKEND),
            queue_name=str(action_settings.TASKS_QUEUE),
            **options,
        )

    def dispatch(self, action_id: UUID) -> None:
        if not self.accepting:
            return
        try:
            self._task(**self._fair_priority(action_id)).enqueue(str(action_id))
        except Exception:
            # The row stays pending; recovery dispatches it again.
            logger.exception("Could not enqueue action %s; recovery will retry", action_id)

    def dispatch_at(self, action_id: UUID, when: datetime) -> None:
        backend = self._backend()
        if backend is None or not getattr(backend, "supports_defer", False):
            super().dispatch_at(action_id, when)
            return
        try:
            self._task(run_after=when).enqueue(str(action_id))
        except Exception:
            logger.exception("Could not enqueue action %s for %s", action_id, when)

    def _fair_priority(self, action_id: UUID) -> dict[str, int]:
        """Behind the actions of owners with less work waiting: the more unfinished
        actions an owner has, the lower the task's priority (see ``fairness``)."""
        backend = self._backend()
        if backend is None or not getattr(backend, "supports_priority", False):
            return {}
        waiting = fairness.backlog(action_id)
        return {"priority": max(LOWEST_PRIORITY, -waiting)} if waiting else {}

    def _backend(self) -> Any:
        try:
            return task_backends[str(action_settings.TASKS_BACKEND)]
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
