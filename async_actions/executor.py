"""Running one action: claim the row, call the handler, store the outcome.

Every runner ends here, so an action behaves the same in a thread pool and in a
Django Tasks worker on another machine.
"""

from __future__ import annotations

import json
import logging
import traceback as tb
from typing import Any
from uuid import UUID

from django.db import DatabaseError, close_old_connections
from django.db.models import F
from django.utils import timezone

from async_actions.conf import action_settings
from async_actions.context import ActionCancelled, ActionContext, ActionError, _current
from async_actions.handlers import get_handler
from async_actions.models import Action
from async_actions.monitor import monitor
from async_actions.progress import ProgressError, Publisher
from async_actions.signals import action_finished, action_started

logger = logging.getLogger("async_actions")

UNEXPECTED_ERROR = "The action failed because of an unexpected error."


def claim(action_id: UUID | str) -> Action | None:
    """Move the action from pending to running in one conditional UPDATE.

    Only one caller wins, so an action runs once even when its message is delivered
    twice or two workers race for it.
    """
    now = timezone.now()
    won = Action.objects.filter(pk=action_id, status=Action.Status.PENDING).update(
        status=Action.Status.RUNNING,
        started_at=now,
        heartbeat_at=now,
        attempt=F("attempt") + 1,
        seq=F("seq") + 1,
    )
    if not won:
        return None
    return Action.objects.get(pk=action_id)


def execute(action_id: UUID | str) -> str | None:
    """Run the action if it is still pending; return its final status (None if not run)."""
    close_old_connections()
    try:
        action = claim(action_id)
    except DatabaseError:
        logger.exception("Could not claim action %s; it stays pending", action_id)
        close_old_connections()
        return None
    if action is None:
        return None
    try:
        return run_claimed(action)
    finally:
        close_old_connections()


def run_claimed(action: Action) -> str:
    publisher = Publisher(action)
    ctx = ActionContext(action, publisher)
    monitor.register(ctx, publisher)
    token = _current.set(ctx)
    status, response, error, trace = Action.Status.SUCCEEDED, None, "", ""
    try:
        action_started.send(sender=Action, action=action)
        handler = get_handler(action.handler)
        if handler is None:
            raise ActionError(f"No handler named {action.handler!r} is available in this worker.")
        response = handler.handle(ctx)
        response = _checked_response(response)
    except ActionCancelled:
        status = Action.Status.CANCELLED
    except ActionError as exc:
        status, error = Action.Status.FAILED, str(exc) or UNEXPECTED_ERROR
        trace = tb.format_exc()
    except ProgressError as exc:
        status, error, trace = Action.Status.FAILED, str(exc), tb.format_exc()
    except Exception:
        status, error, trace = Action.Status.FAILED, UNEXPECTED_ERROR, tb.format_exc()
        logger.exception("Action %s (%s) failed", action.pk, action.handler)
    finally:
        _current.reset(token)
    if status != Action.Status.SUCCEEDED:
        response = None
    try:
        written = publisher.finish(
            status,
            response=response,
            error=error,
            traceback=trace,
            retry_for=float(action_settings.STALE_AFTER),
        )
    finally:
        monitor.unregister(action.pk)
    if written:
        try:
            action.refresh_from_db()
        except DatabaseError:
            close_old_connections()
        action_finished.send(sender=Action, action=action, status=status)
    return status


def _checked_response(response: Any) -> Any:
    try:
        text = json.dumps(response, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ActionError(f"The handler's result is not JSON-serializable: {exc}") from None
    limit = int(action_settings.MAX_RESPONSE_BYTES)
    if len(text) > limit:
        raise ActionError(
            f"The handler's result is {len(text)} bytes as JSON; the limit is {limit} "
            "(ASYNC_ACTIONS['MAX_RESPONSE_BYTES'])."
        )
    return response
