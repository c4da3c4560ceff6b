"""The per-process monitor thread: trailing progress, heartbeats and remote cancels.

One thread serves every action running in the process, so a handler never pays for
these and the database sees one heartbeat query per interval, not one per action.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING
from uuid import UUID

from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from async_actions.conf import action_settings

if TYPE_CHECKING:
    from async_actions.context import ActionContext
    from async_actions.progress import Publisher

logger = logging.getLogger("async_actions")


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
        for ctx, publisher in entries:
            try:
                publisher.flush_due(now)
            except Exception:
                logger.exception("Flushing progress of %s failed", ctx.action_id)
            if publisher.lost:
                ctx.request_cancel()
        from async_actions.limits import watchdog

        watchdog.tick(now)
        if now - self._last_cancel_poll >= float(action_settings.CANCEL_POLL_INTERVAL):
            self._last_cancel_poll = now
            self._poll_cancels(entries)
        if now - self._last_heartbeat >= float(action_settings.HEARTBEAT_INTERVAL):
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
