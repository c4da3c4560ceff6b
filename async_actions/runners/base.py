"""The contract every runner keeps, shaped like a Django Tasks backend.

A runner subclasses :class:`BaseRunner`, implements :meth:`BaseRunner.dispatch`, and
states what it can do in capability flags (like a Tasks backend's ``supports_defer``).
Building one has no side effects: threads, signal handlers and the recovery sweeper
start in :meth:`BaseRunner.start`, which ``async_actions.startup()`` calls.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from django.core.checks import CheckMessage
from django.utils import timezone

from async_actions import recovery


class BaseRunner(ABC):
    """Executes actions somewhere: in this process's threads, or in other workers.

    The capability flags say what a runner can do; a subclass overrides the ones that
    differ (a class attribute, or a property when the answer depends on settings, as
    the TasksRunner's depend on its Tasks backend).
    """

    #: Handlers run inside this process (they share its memory and its lifetime), so the
    #: pool and its shutdown live here too.
    runs_in_process: bool = False
    #: ``dispatch_at`` hands the delay to the queue itself (durable across a restart);
    #: without it, the default ``dispatch_at`` keeps a timer in this process.
    supports_defer: bool = False
    #: ``dispatch`` passes a priority, so owners with less work waiting go first
    #: (``fairness.backlog``); without it, dispatches run in the order they came.
    supports_priority: bool = False
    #: ``holds`` knows which pending actions a live queue still has; without it,
    #: ``holds`` returns nothing and recovery dispatches every lost pending action again.
    can_hold: bool = False

    def __init__(self) -> None:
        self.accepting = True

    def start(self) -> None:
        """Start this process's machinery (recovery, shutdown hooks); safe to call again.

        Construction has no side effects; ``async_actions.startup()`` calls this in
        every server and worker process.
        """
        recovery.start_periodic(sweep_now=True)

    def holds(self, action_ids: Iterable[UUID]) -> set[UUID]:
        """Which of these pending actions a live queue still holds.

        Recovery dispatches a pending action again only when no queue holds it, so a
        backlog waiting for free workers is not queued over and over. The default knows
        of no queue.
        """
        return set()

    @abstractmethod
    def dispatch(self, action_id: UUID) -> None:
        """Arrange for ``executor.execute(action_id)`` to run; called after commit."""

    def dispatch_at(self, action_id: UUID, when: datetime) -> None:
        """Dispatch once ``when`` has come (retry backoff).

        The default keeps a timer in this process; runners whose queue can delay work
        (a Tasks backend's ``run_after``) should override it. The delay is also stored
        on the row, so a lost timer only means the action waits for recovery.
        """
        delay = max(0.0, (when - timezone.now()).total_seconds())
        timer = threading.Timer(delay, self.dispatch, args=(action_id,))
        timer.daemon = True
        timer.start()

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting work and let running actions end; nothing stays running."""
        self.accepting = False

    def close(self) -> None:
        """Release resources when settings change (tests); defaults to shutdown."""
        self.shutdown(timeout=0)

    def check(self) -> Iterable[CheckMessage]:
        """System-check messages about this runner's configuration."""
        return ()
