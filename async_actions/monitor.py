"""The per-process monitor thread: trailing progress, heartbeats and remote cancels.

One thread serves every action running in the process, so a handler never pays for
these and the database sees one heartbeat query per interval, not one per action.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import DatabaseError, close_old_connections
from django.db.backends.signals import connection_created
from django.dispatch import receiver
from django.utils import timezone

from async_actions.conf import action_settings

if TYPE_CHECKING:
    from async_actions.context import ActionContext
    from async_actions.models import Action
    from async_actions.progress import Publisher

logger = logging.getLogger("async_actions")

#: Seconds a monitor write may wait for a lock another connection holds. One thread
#: serves every action in the process (pushes, cancels, time limits), so a write that
#: meets a long transaction (SQLite's write lock, a PostgreSQL row lock) gives up and
#: is tried again on a later tick, instead of waiting out the busy timeout (or, on
#: PostgreSQL, the other transaction's commit) while every other action waits too.
LOCK_WAIT = 0.25


class Monitor:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._running: dict[UUID, tuple[ActionContext, Publisher]] = {}
        self._thread: threading.Thread | None = None
        self._last_heartbeat = 0.0
        self._last_cancel_poll = 0.0

    def register(self, ctx: ActionContext, publisher: Publisher) -> None:
        with self._lock:
            self._running[ctx.action_id] = (ctx, publisher)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="async-actions-monitor", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def unregister(self, action_id: UUID) -> None:
        with self._lock:
            self._running.pop(action_id, None)

    def local(self, action_id: UUID | str) -> ActionContext | None:
        """The context of an action running in this process, if it is."""
        try:
            key = UUID(str(action_id))
        except ValueError:
            return None
        with self._lock:
            entry = self._running.get(key)
        return entry[0] if entry else None

    def overlay(self, action: Action) -> Action:
        """``action`` with the live progress of its handler, if it runs in this process.

        The row lags the handler by up to ``PROGRESS_DB_INTERVAL``, and by the whole
        transaction when the handler's transaction holds SQLite's write lock; readers in
        this process (status JSON, API, admin, a WebSocket's first snapshot) show what
        the handler reported, not what could be written so far.
        """
        if action.status != "running":
            return action
        with self._lock:
            entry = self._running.get(action.pk)
        live = entry[1].live_fields() if entry else None
        if live is not None and live["seq"] > action.seq:
            for name, value in live.items():
                setattr(action, name, value)
        return action

    def running_ids(self) -> list[UUID]:
        with self._lock:
            return list(self._running)

    def contexts(self) -> list[ActionContext]:
        with self._lock:
            return [ctx for ctx, _ in self._running.values()]

    def _loop(self) -> None:
        while True:
            try:
                self._tick()
            except Exception:  # the monitor must outlive any one bad tick
                logger.exception("async_actions monitor tick failed")
                time.sleep(0.5)

    def _tick(self) -> None:
        with self._lock:
            idle = not self._running
        if idle:
            with contextlib.suppress(Exception):
                close_old_connections()  # do not hold a connection while nothing runs
            with self._lock:
                while not self._running:
                    self._wake.wait()
        with self._lock:
            entries = list(self._running.values())
        now = time.monotonic()
        # While a handler's transaction holds SQLite's only write lock, no other
        # connection can write: push only, and write once it commits.
        writable = not any(pub.on_sqlite and pub.in_handler_transaction() for _, pub in entries)
        for ctx, publisher in entries:
            try:
                publisher.flush_due(now, write=writable)
            except Exception:
                logger.exception("Flushing progress of %s failed", ctx.action_id)
            if publisher.lost:
                ctx.request_cancel()
        from async_actions.limits import watchdog

        watchdog.tick(now)
        if now - self._last_cancel_poll >= float(action_settings.CANCEL_POLL_INTERVAL):
            self._last_cancel_poll = now
            self._poll_cancels(entries)
        if writable and now - self._last_heartbeat >= float(action_settings.HEARTBEAT_INTERVAL):
            self._last_heartbeat = now
            self._heartbeat([ctx.action_id for ctx, _ in entries])
        time.sleep(max(0.005, min(float(action_settings.PUSH_INTERVAL), 0.25)))

    def _poll_cancels(self, entries: list[tuple[ActionContext, Publisher]]) -> None:
        from django.db.models import Q

        from async_actions.models import Action

        waiting = {ctx.action_id: (ctx, pub) for ctx, pub in entries if not ctx.cancelled}
        if not waiting:
            return
        try:
            flagged = set(
                Action.objects.filter(pk__in=list(waiting))
                .filter(Q(cancel_requested=True) | ~Q(status="running"))
                .values_list("pk", flat=True)
            )
        except DatabaseError:
            close_old_connections()
            return
        for action_id in flagged:
            ctx, publisher = waiting[action_id]
            publisher.cancel_requested = True
            ctx.request_cancel()

    def _heartbeat(self, ids: list[UUID]) -> None:
        from async_actions.models import Action

        if not ids:
            return
        try:
            Action.objects.filter(pk__in=ids, status="running").update(heartbeat_at=timezone.now())
        except DatabaseError:
            close_old_connections()
            logger.warning("Heartbeat of %d running actions not written", len(ids))


monitor = Monitor()


@receiver(connection_created)
def _bound_lock_waits(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Give the monitor thread's connections a ``LOCK_WAIT`` lock timeout."""
    if threading.current_thread() is not monitor._thread:
        return
    millis = int(LOCK_WAIT * 1000)
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(f"PRAGMA busy_timeout = {millis}")
        elif connection.vendor == "postgresql":
            cursor.execute(f"SET lock_timeout = '{millis}ms'")
