"""The contract every runner keeps, shaped like a Django Tasks backend."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from django.core.checks import CheckMessage


class BaseRunner:
    """Executes actions somewhere: in this process's threads, or in other workers."""

    def __init__(self) -> None:
        self.accepting = True

    def start(self) -> None:
        """Start this process's machinery (recovery, shutdown hooks); safe to call again.

        Construction has no side effects; ``async_actions.startup()`` calls this in
        every server and worker process.
        """
        from async_actions import recovery

        recovery.start_periodic(sweep_now=True)

    def holds(self, action_ids: Iterable[UUID]) -> set[UUID]:
        """Which of these pending actions a live queue still holds.

        Recovery dispatches a pending action again only when no queue holds it, so a
        backlog waiting for free workers is not queued over and over. The default knows
        of no queue.
        """
        return set()

    def dispatch(self, action_id: UUID) -> None:
        """Arrange for ``executor.execute(action_id)`` to run; called after commit."""
        raise NotImplementedError

    def dispatch_at(self, action_id: UUID, when: datetime) -> None:
        """Dispatch once ``when`` has come (retry backoff).

        The default keeps a timer in this process; runners whose queue can delay work
        (a Tasks backend's ``run_after``) should override it. The delay is also stored
        on the row, so a lost timer only means the action waits for recovery.
        """
        from django.utils import timezone

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
