"""The wire format of action events: group names, the event type, the snapshot dict.

One action's state travels to browsers as a *snapshot* (the dict below) inside a
channel-layer *event*. The snapshot is made from a stored row (``Action.snapshot()``)
and from a running action's publisher (``progress.Publisher``); both call
:func:`snapshot` here, so a page never sees two shapes for the same state.

This module imports nothing of the package: models, the publisher, the transport and
the WebSocket hub all build on it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from django.utils import timezone

__all__ = ["EVENT_TYPE", "event_for", "group_name", "snapshot"]

#: The channel-layer message type of an action's update (a consumer's handler name).
EVENT_TYPE = "action.update"
#: ``Action.Status.FAILED`` as stored: the only status whose snapshot shows its error.
FAILED = "failed"
#: ``Action.Status.PENDING``: the only status whose snapshot shows ``run_after``.
PENDING = "pending"


def group_name(action_id: UUID | str) -> str:
    """The channel-layer group that carries one action's events."""
    return f"async_actions.{UUID(str(action_id)).hex}"


def snapshot(
    *,
    action_id: UUID | str,
    handler: str,
    status: str,
    percent: float,
    message: str,
    data: Any,
    seq: int,
    attempt: int,
    error: str,
    cancel_requested: bool,
    created_at: datetime | None,
    started_at: datetime | None,
    finished_at: datetime | None,
    run_after: datetime | None = None,
) -> dict[str, Any]:
    """The public state of an action, pushed to browsers and answered by the status page.

    ``error`` shows only for a failed action: a cancelled or retried one may keep an
    error text in its row that is not its outcome. ``run_after`` (an ISO time: not
    started before it, a delayed start or a retry's wait) shows only while pending.
    """
    return {
        "id": str(action_id),
        "handler": handler,
        "status": str(status),
        "percent": percent,
        "message": message,
        "data": data,
        "seq": seq,
        "attempt": attempt,
        "error": error if status == FAILED else "",
        "cancel_requested": cancel_requested,
        "created_at": _iso(created_at),
        "started_at": _iso(started_at),
        "finished_at": _iso(finished_at),
        "run_after": _iso(run_after) if status == PENDING else None,
    }


def event_for(state: dict[str, Any], group: str | None = None) -> dict[str, Any]:
    """A channel-layer message carrying ``state`` (a :func:`snapshot`).

    The JSON text is made once here, not once per subscriber; ``group`` names the
    action's group in the message, which a hub routes by.
    """
    return {
        "type": EVENT_TYPE,
        "group": group or group_name(state["id"]),
        "seq": state["seq"],
        "status": state["status"],
        "text": json.dumps({"type": "update", "action": state}),
    }


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 with an offset: with ``USE_TZ`` off the stored time is naive in
    ``TIME_ZONE``, which a browser would read as its own zone, so it is made aware first."""
    if value is None:
        return None
    if timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return value.isoformat()
