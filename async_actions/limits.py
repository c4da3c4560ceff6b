"""Time limits: a soft limit asks the handler to cancel, a hard one gives up on it.

At ``time_limit`` seconds the action's cancel flag is set (async handlers get
``CancelledError``). ``TIME_LIMIT_GRACE`` seconds later, if the handler still has not
returned, the action is failed with "Time limit exceeded" and its thread abandoned: the
runner is told (``on_abandon``) so it can replace the pool slot. Python cannot kill a
thread, so the abandoned one runs on until the handler returns; its late final write is
conditional on ``status='running'`` and changes nothing.

The per-process monitor thread calls :meth:`Watchdog.tick`, so limits cost no thread of
their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from uuid import UUID

from django.db import DatabaseError, close_old_connections

from async_actions.conf import action_settings

if TYPE_CHECKING:
    from async_actions.context import ActionContext
    from async_actions.progress import Publisher

logger = logging.getLogger("async_actions")


def time_limit_error(limit: float) -> str:
    return f"Time limit exceeded: the action ran longer than {limit:g} seconds."


@dataclass
class _Watch:
    ctx: ActionContext
    publisher: Publisher
    limit: float
    soft_at: float
    hard_at: float
    concurrency_key: str
    on_abandon: Callable[[], None] | None
    thread: threading.Thread = field(default_factory=threading.current_thread)
    soft_hit: bool = False


class Watchdog:
    """Deadlines of the actions running in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[UUID, _Watch] = {}

    def watch(
        self,
        ctx: ActionContext,
        publisher: Publisher,
        limit: float | None,
        *,
        concurrency_key: str = "",
        on_abandon: Callable[[], None] | None = None,
    ) -> None:
        """Start the clock for an action (no-op without a limit)."""
        if limit is None:
            return
        grace = float(action_settings.TIME_LIMIT_GRACE)
        start = ctx.started_monotonic
        watch = _Watch(
            ctx,
            publisher,
            float(limit),
            start + float(limit),
            start + float(limit) + grace,
            concurrency_key,
            on_abandon,
        )
        with self._lock:
            self._watches[ctx.action_id] = watch

    def unwatch(self, action_id: UUID) -> bool:
        """Stop the clock; True if the soft limit had been reached."""
        with self._lock:
            watch = self._watches.pop(action_id, None)
        return watch is not None and watch.soft_hit

    def soft_limit_hit(self, action_id: UUID) -> float | None:
        """The limit when the action's soft limit was reached, else None."""
        with self._lock:
            watch = self._watches.get(action_id)
        return watch.limit if watch is not None and watch.soft_hit else None

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            if not watch.soft_hit and now >= watch.soft_at:
                watch.soft_hit = True
                logger.warning(
                    "Action %s (%s) reached its time limit of %gs; asking it to cancel",
                    watch.ctx.action_id,
                    watch.ctx.handler_name,
                    watch.limit,
                )
                watch.ctx._signal_cancel()
            if now >= watch.hard_at:
                self._expire(watch)

    def _expire(self, watch: _Watch) -> None:
        from async_actions import concurrency
        from async_actions.models import Action
        from async_actions.signals import action_finished

        action_id = watch.ctx.action_id
        written = watch.publisher.finish(Action.Status.FAILED, error=time_limit_error(watch.limit))
        if not written:
            try:
                still_running = Action.objects.filter(pk=action_id, status="running").exists()
            except DatabaseError:
                close_old_connections()
                return  # the database is down: try again on the next tick
            if still_running:
                return
        with self._lock:
            abandon = self._watches.pop(action_id, None) is not None
        if abandon:  # else the handler returned meanwhile: its thread is free
            self._abandon(watch)
        if written:
            concurrency.release(watch.concurrency_key)
            try:
                action = Action.objects.get(pk=action_id)
            except (Action.DoesNotExist, DatabaseError):
                return
            action_finished.send(sender=Action, action=action, status=Action.Status.FAILED)

    def _abandon(self, watch: _Watch) -> None:
        from async_actions.monitor import monitor

        action_id = watch.ctx.action_id
        monitor.unregister(action_id)
        logger.error(
            "Action %s (%s) ignored its time limit of %gs plus %gs grace; it is failed and "
            "its thread %r abandoned",
            action_id,
            watch.ctx.handler_name,
            watch.limit,
            float(action_settings.TIME_LIMIT_GRACE),
            watch.thread.name,
        )
        if watch.on_abandon is not None:
            try:
                watch.on_abandon()
            except Exception:
                logger.exception("Replacing the thread of action %s failed", action_id)


watchdog = Watchdog()
