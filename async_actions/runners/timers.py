"""Dispatches at a later time, kept in this process: one thread for all of them.

Runners whose queue cannot delay work (the thread pool; a Tasks backend without
``supports_defer``) wait here for a delayed start or a retry's backoff. The time is
also on the row (``run_after``), so a lost timer (a restart) is set again by the
start-up sweep (``recovery``); this only has to be right while the process lives.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from uuid import UUID

from django.utils import timezone

logger = logging.getLogger("async_actions")


class Timers:
    """Call ``fire(action_id)`` once each action's time has come.

    Scheduling one action twice keeps the earlier time: firing early is harmless (the
    claim re-checks ``run_after`` and the executor dispatches it again for then), firing
    late is not. No thread starts until the first schedule.
    """

    def __init__(self, fire: Callable[[UUID], None], name: str = "async-actions-timers") -> None:
        self._fire = fire
        self._name = name
        self._lock = threading.Condition()
        self._heap: list[tuple[datetime, int, UUID]] = []
        self._due: dict[UUID, datetime] = {}
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def schedule(self, action_id: UUID, when: datetime) -> None:
        with self._lock:
            if self._closed:
                return
            known = self._due.get(action_id)
            if known is not None and known <= when:
                return
            self._due[action_id] = when
            heapq.heappush(self._heap, (when, next(self._order), action_id))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._lock.notify()

    def waiting(self) -> set[UUID]:
        """The actions with a timer set here."""
        with self._lock:
            return set(self._due)

    def close(self) -> None:
        """Forget every timer; nothing fires afterwards (the rows keep their times)."""
        with self._lock:
            self._closed = True
            self._heap.clear()
            self._due.clear()
            self._lock.notify()

    def _loop(self) -> None:
        while True:
            with self._lock:
                action_id = self._next_due_locked()
                if action_id is None:
                    return
            try:
                self._fire(action_id)
            except Exception:  # one bad dispatch must not stop every other timer
                logger.exception("Could not dispatch delayed action %s", action_id)

    def _next_due_locked(self) -> UUID | None:
        """Wait for the earliest timer's time and take it; None once closed."""
        while not self._closed:
            if not self._heap:
                self._lock.wait()
                continue
            when, _, action_id = self._heap[0]
            if self._due.get(action_id) != when:  # replaced by an earlier time, or fired
                heapq.heappop(self._heap)
                continue
            delay = (when - timezone.now()).total_seconds()
            if delay > 0:
                self._lock.wait(min(delay, 3600.0))
                continue
            heapq.heappop(self._heap)
            del self._due[action_id]
            return action_id
        return None
