"""The supervisor: one thread per process that looks after every running action.

Each tick it flushes trailing progress, beats the heartbeat of all running actions in
one query, polls for cancels requested by other processes, and enforces time limits,
so a handler never pays for any of these and the database sees one heartbeat query
per interval, not one per action. One registry (one lock) holds what it needs to know
of each running action: its context, its publisher and its clock.

Time limits: at ``time_limit`` seconds the action is asked to cancel (async handlers get
``CancelledError``). ``TIME_LIMIT_GRACE`` seconds later, if the handler still has not
returned, the action is failed with "Time limit exceeded" and its thread abandoned: the
runner is told (``on_abandon``) so it can replace the pool slot. Python cannot kill a
thread, so the abandoned one runs on until the handler returns; its late final write is
conditional on ``status='running'`` and changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import DatabaseError, close_old_connections
from django.db.backends.signals import connection_created
from django.db.models import Q
from django.dispatch import receiver
from django.utils import timezone
from django.utils.translation import gettext

from async_actions import lifecycle
from async_actions.conf import action_settings
from async_actions.models import Action
from async_actions.progress import store_progress

if TYPE_CHECKING:
    from async_actions.context import ActionContext
    from async_actions.progress import Publisher

__all__ = ["LOCK_WAIT", "Supervisor", "supervisor", "time_limit_error"]

logger = logging.getLogger("async_actions")

#: Seconds a supervisor write may wait for a lock another connection holds. One thread
#: serves every action in the process (pushes, cancels, time limits), so a write that
#: meets a long transaction (SQLite's write lock, a PostgreSQL row lock) gives up and
#: is tried again on a later tick, instead of waiting out the busy timeout (or, on
#: PostgreSQL, the other transaction's commit) while every other action waits too.
LOCK_WAIT = 0.25


def time_limit_error(limit: float) -> str:
    return gettext("Time limit exceeded: the action ran longer than %(seconds)s seconds.") % {
        "seconds": f"{limit:g}"
    }


@dataclass
class _Clock:
    """An action's time limit: soft and hard deadlines on the monotonic clock."""

    limit: float
    soft_at: float
    hard_at: float
    on_abandon: Callable[[], None] | None
    soft_hit: bool = False


@dataclass
class _Running:
    """One running action, as the supervisor knows it."""

    ctx: ActionContext
    publisher: Publisher
    #: The thread that runs the handler (named in the log when it is abandoned).
    thread: threading.Thread = field(default_factory=threading.current_thread)
    #: Set while the handler runs under a time limit; None once it returned.
    clock: _Clock | None = None


class Supervisor:
    """The registry of actions running in this process, and the thread that serves it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._running: dict[UUID, _Running] = {}
        self._thread: threading.Thread | None = None
        self._last_heartbeat = 0.0
        self._last_cancel_poll = 0.0

    # -- called by the executor, in the thread that runs the handler -------------------
    def register(self, ctx: ActionContext, publisher: Publisher) -> None:
        """Serve the action from now until :meth:`unregister` (after its final write)."""
        # From now on this thread writes the action's progress, with every other running
        # action's in one transaction (progress.store_progress), not the handler's.
        publisher.inline_writes = False
        with self._lock:
            self._running[ctx.action_id] = _Running(ctx, publisher)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="async-actions-supervisor", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def start_clock(
        self,
        action_id: UUID,
        limit: float | None,
        *,
        on_abandon: Callable[[], None] | None = None,
    ) -> None:
        """Enforce ``limit`` seconds (counted from the context's start; None: no limit)."""
        if limit is None:
            return
        grace = float(action_settings.TIME_LIMIT_GRACE)
        with self._lock:
            entry = self._running.get(action_id)
            if entry is None:
                return
            start = entry.ctx.started_monotonic
            limit = float(limit)
            entry.clock = _Clock(limit, start + limit, start + limit + grace, on_abandon)

    def stop_clock(self, action_id: UUID) -> float | None:
        """The handler returned: stop its clock. The limit if its soft limit was reached
        (the action then fails with the time limit error), else None."""
        with self._lock:
            entry = self._running.get(action_id)
            clock = entry.clock if entry is not None else None
            if entry is not None:
                entry.clock = None
        return clock.limit if clock is not None and clock.soft_hit else None

    def unregister(self, action_id: UUID) -> None:
        with self._lock:
            self._running.pop(action_id, None)

    # -- read by any thread ------------------------------------------------------------
    def local(self, action_id: UUID | str) -> ActionContext | None:
        """The context of an action running in this process, if it is."""
        try:
            key = UUID(str(action_id))
        except ValueError:
            return None
        with self._lock:
            entry = self._running.get(key)
        return entry.ctx if entry else None

    def overlay(self, action: Action) -> Action:
        """``action`` with the live progress of its handler, if it runs in this process.

        The row lags the handler by up to ``PROGRESS_DB_INTERVAL``, and by the whole
        transaction when the handler's transaction holds SQLite's write lock; readers in
        this process (status JSON, API, admin, a WebSocket's first snapshot) show what
        the handler reported, not what could be written so far.
        """
        if action.status != Action.Status.RUNNING:
            return action
        with self._lock:
            entry = self._running.get(action.pk)
        live = entry.publisher.live_fields() if entry else None
        if live is not None and live["seq"] > action.seq:
            for name, value in live.items():
                setattr(action, name, value)
        return action

    def running_ids(self) -> list[UUID]:
        with self._lock:
            return list(self._running)

    def contexts(self) -> list[ActionContext]:
        with self._lock:
            return [entry.ctx for entry in self._running.values()]

    # -- the thread --------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                self._tick()
            except Exception:  # the supervisor must outlive any one bad tick
                logger.exception("async_actions supervisor tick failed")
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
        writable = not any(
            e.publisher.on_sqlite and e.publisher.in_handler_transaction() for e in entries
        )
        self._flush(entries, now, write=writable)
        for entry in entries:
            self._enforce_limit(entry, now)
        if now - self._last_cancel_poll >= float(action_settings.CANCEL_POLL_INTERVAL):
            self._last_cancel_poll = now
            self._poll_cancels(entries)
        if writable and now - self._last_heartbeat >= float(action_settings.HEARTBEAT_INTERVAL):
            self._last_heartbeat = now
            self._heartbeat([entry.ctx.action_id for entry in entries])
        time.sleep(max(0.005, min(float(action_settings.PUSH_INTERVAL), 0.25)))

    def _flush(self, entries: list[_Running], now: float, *, write: bool) -> None:
        """Push what no update pushed, then write every due action's progress at once."""
        for entry in entries:
            try:
                entry.publisher.flush_due(now, write=False)
            except Exception:
                logger.exception("Pushing progress of %s failed", entry.ctx.action_id)
        if write:
            try:
                store_progress((entry.publisher for entry in entries), now)
            except Exception:
                logger.exception("Writing progress of %d actions failed", len(entries))
        for entry in entries:
            if entry.publisher.lost:
                entry.ctx.cancel("its row stopped running")

    def _poll_cancels(self, entries: list[_Running]) -> None:
        """Stop handlers whose cancel was requested elsewhere, or whose row was ended
        from outside. An action whose handler has just written its own end (its
        publisher closed, before or during the read) is neither: it is left alone,
        where it used to be "asked to cancel" in the log after it had ended."""
        waiting = {
            e.ctx.action_id: e for e in entries if not e.ctx.cancelled and not e.publisher.closed
        }
        if not waiting:
            return
        try:
            flagged = list(
                Action.objects.primary()
                .filter(pk__in=list(waiting))
                .filter(Q(cancel_requested=True) | ~Q(status=Action.Status.RUNNING))
                .values_list("pk", "cancel_requested")
            )
        except DatabaseError:
            close_old_connections()
            return
        for action_id, requested in flagged:
            entry = waiting[action_id]
            if not entry.publisher.closed:
                entry.ctx.cancel("requested" if requested else "ended from outside")

    def _heartbeat(self, ids: list[UUID]) -> None:
        if not ids:
            return
        try:
            Action.objects.primary().filter(pk__in=ids, status=Action.Status.RUNNING).update(
                heartbeat_at=timezone.now()
            )
        except DatabaseError:
            close_old_connections()
            logger.warning("Heartbeat of %d running actions not written", len(ids))

    # -- time limits -------------------------------------------------------------------
    def _enforce_limit(self, entry: _Running, now: float) -> None:
        clock = entry.clock
        if clock is None:
            return
        if not clock.soft_hit and now >= clock.soft_at:
            clock.soft_hit = True
            logger.warning(
                "Action %s (%s) reached its time limit of %gs; asking it to cancel",
                entry.ctx.action_id,
                entry.ctx.handler_name,
                clock.limit,
            )
            entry.ctx._signal_cancel("time limit")  # not a user's cancel: no flag on the row
        if now >= clock.hard_at:
            self._expire(entry, clock)

    def _expire(self, entry: _Running, clock: _Clock) -> None:
        """Fail an action past its hard limit and give up on its thread."""
        action_id = entry.ctx.action_id
        abandoned = False

        def abandon() -> None:
            nonlocal abandoned
            abandoned = self._let_go(entry, clock)

        written = lifecycle.finish(
            entry.publisher,
            Action.Status.FAILED,
            error=time_limit_error(clock.limit),
            on_written=abandon,
        )
        if written:
            return
        try:
            still_running = (
                Action.objects.primary().filter(pk=action_id, status=Action.Status.RUNNING).exists()
            )
        except DatabaseError:
            close_old_connections()
            return  # the database is down: try again on the next tick
        if not still_running:  # ended elsewhere (the service, a sweep) with the handler stuck
            abandon()

    def _let_go(self, entry: _Running, clock: _Clock) -> bool:
        """Unregister the action and tell the runner its thread is lost, unless the
        handler returned meanwhile (its thread is free then); True if let go."""
        action_id = entry.ctx.action_id
        with self._lock:
            if entry.clock is not clock:
                return False
            entry.clock = None
            self._running.pop(action_id, None)
        logger.error(
            "Action %s (%s) ignored its time limit of %gs plus %gs grace; it is failed and "
            "its thread %r abandoned",
            action_id,
            entry.ctx.handler_name,
            clock.limit,
            float(action_settings.TIME_LIMIT_GRACE),
            entry.thread.name,
        )
        if clock.on_abandon is not None:
            try:
                clock.on_abandon()
            except Exception:
                logger.exception("Replacing the thread of action %s failed", action_id)
        return True


supervisor = Supervisor()


@receiver(connection_created)
def _bound_lock_waits(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Give the supervisor thread's connections a ``LOCK_WAIT`` lock timeout."""
    if threading.current_thread() is not supervisor._thread:
        return
    millis = int(LOCK_WAIT * 1000)
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(f"PRAGMA busy_timeout = {millis}")
        elif connection.vendor == "postgresql":
            cursor.execute(f"SET lock_timeout = '{millis}ms'")
