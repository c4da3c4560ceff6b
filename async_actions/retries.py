"""Retries: an attempt ended by a ``retry_on`` exception sends the action back to pending.

The row keeps its id, so pages and API clients that watch it see the attempt number
go up and progress restart. ``run_after`` stores the backoff in the database, so a
restart does not lose it; the runner dispatches again when it is due.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import DatabaseError
from django.utils import timezone
from django.utils.translation import gettext

from async_actions import dispatcher, lifecycle
from async_actions.conf import action_settings
from async_actions.models import Action
from async_actions.signals import action_retrying

if TYPE_CHECKING:
    from async_actions.dispatcher import Dispatcher
    from async_actions.handlers import ActionHandler
    from async_actions.progress import Publisher

logger = logging.getLogger("async_actions")


def retry_later(
    action: Action,
    handler: ActionHandler,
    publisher: Publisher,
    exc: BaseException,
    *,
    runner: Dispatcher | None = None,
) -> bool:
    """Requeue ``action`` after its failed attempt; True if the row went back to pending.

    The status change is :func:`async_actions.lifecycle.requeue`'s; this decides the
    backoff, dispatches the next attempt for it (on ``runner``, the one running this
    attempt; the process's dispatcher when None) and sends ``action_retrying``.
    """

    delay = handler.retry_delay(action.attempt)
    run_after = timezone.now() + timedelta(seconds=delay)
    logger.warning(
        "Action %s (%s) attempt %d of %d failed; retrying in %gs",
        action.pk,
        action.handler,
        action.attempt,
        handler.max_attempts,
        delay,
        exc_info=exc,
    )
    # Only the exception's class: its text may hold details meant for staff only.
    note = gettext(
        "Attempt %(attempt)s of %(max)s failed (%(error)s); retrying in %(delay)s s."
    ) % {
        "attempt": action.attempt,
        "max": handler.max_attempts,
        "error": type(exc).__name__,
        "delay": f"{delay:g}",
    }
    written = lifecycle.requeue(
        publisher,
        run_after=run_after,
        note=note,
        retry_for=float(action_settings.STALE_AFTER),
    )
    if not written:
        return False
    # Receivers get the row as requeued: dispatched first, the next attempt could
    # already have claimed (or even finished) it when they read it.
    try:
        action.refresh_from_db()
        action_retrying.send(sender=Action, action=action, exception=exc, run_after=run_after)
    except (Action.DoesNotExist, DatabaseError):
        pass
    finally:
        (runner or dispatcher.current()).dispatch_at(action.pk, run_after)
    return True
