"""Concurrency keys: actions that share a key never run at the same time.

The guarantee lives in the database: a partial unique index allows one ``running`` row
per key, so of two claims racing for a key (threads, processes, machines) the second
fails and its action stays ``pending``. Whoever ends the running action then dispatches
the oldest action waiting for the key (:func:`release`).

``on_busy = "refuse"`` turns a busy key into ``OpStatus.BUSY`` at start. That check is
serialized per key: a transaction-scoped advisory lock on PostgreSQL, SQLite's single
writer elsewhere, so two racing starts are never both accepted.
"""

from __future__ import annotations

import logging
import zlib
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError
from django.db.models import Q
from django.utils import timezone

from async_actions import dispatcher, statements
from async_actions.handlers import HandlerError
from async_actions.models import Action

if TYPE_CHECKING:
    from async_actions.handlers import ActionHandler

logger = logging.getLogger("async_actions")


def key_for(handler: ActionHandler, request: Any) -> str:
    """The handler's key for ``request`` ("" for none).

    A key function that fails on the request is a ValueError (bad input, like an
    oversized request); one that returns a non-string is a HandlerError.
    """
    try:
        key = handler.get_concurrency_key(request)
    except Exception as exc:
        raise ValueError(
            f"Handler {handler.name!r} could not derive a concurrency key from the request: {exc!r}"
        ) from exc
    if key is None or key == "":
        return ""
    if not isinstance(key, str) or len(key) > 255:
        raise HandlerError(
            f"Handler {handler.name!r}: the concurrency key must be a string of at most "
            f"255 characters or None, not {key!r}."
        )
    return key


def lock(key: str) -> None:
    """Serialize starts for ``key`` until the current transaction ends.

    PostgreSQL gets an advisory lock; SQLite needs none because the INSERT that
    precedes the busy check takes the database's single write lock.
    """
    conn = statements.writer()
    if conn.vendor == "postgresql":
        with conn.cursor() as cursor:
            cursor.execute(*lock_sql(key))


def lock_sql(key: str) -> tuple[str, list[Any]]:
    """:func:`lock`'s statement (PostgreSQL), for a start that sends it in one round trip
    with the check it protects."""
    lock_id = zlib.crc32(f"async_actions:{key}".encode()) - 2**31
    return "SELECT pg_advisory_xact_lock(%s, %s)", [0x4A41, lock_id]


def busy(key: str, *, exclude: Any = None) -> bool:
    """Whether another action with ``key`` is pending or running."""
    return (
        Action.objects.primary().active().filter(concurrency_key=key).exclude(pk=exclude).exists()
    )


def release(key: str) -> None:
    """Dispatch the oldest action waiting for ``key``; call after a holder ends.

    Harmless when the key is still taken (the claim fails and the action keeps waiting)
    or when nobody waits.
    """
    if not key:
        return
    now = timezone.now()
    try:
        waiting = (
            Action.objects.primary()
            .filter(status=Action.Status.PENDING, concurrency_key=key)
            .filter(Q(run_after__isnull=True) | Q(run_after__lte=now))
            .order_by("created_at", "pk")  # the order claims enforce (executor)
            .values_list("pk", flat=True)
            .first()
        )
    except DatabaseError:
        logger.exception("Could not look for actions waiting for concurrency key %r", key)
        return
    if waiting is not None:
        dispatcher.current().dispatch(waiting)
