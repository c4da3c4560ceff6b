"""The Celery tasks of the app, where Celery's ``app.autodiscover_tasks()`` looks for them.

``async_actions.run_action`` (defined with the CeleryRunner) runs an action by id;
``async_actions.start_action`` starts one by handler name, for Celery beat or any other
producer of Celery messages. Importing this module needs the ``celery`` extra; only
Celery processes import it.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from async_actions import service
from async_actions.exceptions import StartRefused
from async_actions.runners.celery import run_action

__all__ = ["run_action", "start_action"]


@shared_task(name="async_actions.start_action", ignore_result=False)  # type: ignore[untyped-decorator]
def start_action(handler: str, request: Any = None, *, idempotency_key: str | None = None) -> str:
    """Start an action of ``handler`` with ``request`` (JSON); the new action's id.

    For a beat entry: ``{"task": "async_actions.start_action", "args": ["reports.nightly",
    {"day": "today"}]}``. The action belongs to no user or session (staff see it in the
    admin). A refused start raises :class:`StartRefused`, so the run shows as failed.
    """
    started = service.start(handler, request, idempotency_key=idempotency_key)
    if not started.ok or started.action is None:
        raise StartRefused(f"Could not start {handler!r}: {started.status.value}")
    return str(started.action.pk)
