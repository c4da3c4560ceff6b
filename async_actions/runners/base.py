"""The contract every runner keeps, shaped like a Django Tasks backend.

A runner subclasses :class:`BaseRunner`, implements :meth:`BaseRunner.dispatch`, and
states what it can do in capability flags (like a Tasks backend's ``supports_defer``).
Building one has no side effects: threads, signal handlers and the recovery sweeper
start in :meth:`BaseRunner.start`, which ``async_actions.startup()`` calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import datetime
from functools import partial
from typing import Any
from uuid import UUID

from django.core.checks import CheckMessage
from django.db import router, transaction

from async_actions import recovery
from async_actions.models import Action
from async_actions.runners.timers import Timers


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
        #: Delayed dispatches kept in this process (``dispatch_at``); no thread until used.
        self.timers = Timers(self.dispatch)

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
        only its own timers (``dispatch_at``).
        """
        waiting = self.timers.waiting()
        return {pk for pk in action_ids if pk in waiting}

    @abstractmethod
    def dispatch(self, action_id: UUID) -> None:
        """Arrange for ``executor.execute(action_id)`` to run; called after commit."""

    def message_id_for_start(self) -> str:
        """The id of the message a start will send, stored in the action's INSERT
        (``task_id``) so the dispatch after commit need not write it; "" when the queue
        chooses its ids itself (the default)."""
        return ""

    def dispatch_after_commit(
        self, action_id: UUID, when: datetime | None = None, action: Any = None
    ) -> None:
        """Dispatch a new action once the transaction that created it commits (at
        ``when`` for a delayed start).

        ``service.start`` calls it after its INSERT, with the ``action`` it inserted (a
        runner may send what it knows from it instead of reading the row again); a
        handler never races the transaction that made its data. (The testing runners
        override it: a test's own transaction never commits.)
        """
        if when is None:
            transaction.on_commit(partial(self.dispatch, action_id), using=_alias())
        else:
            transaction.on_commit(partial(self.dispatch_at, action_id, when), using=_alias())

    def enqueues_in_start(self) -> bool:
        """Whether ``service.start`` may hand the action over inside its own transaction
        (:meth:`enqueue_in_start`) instead of after commit (:meth:`dispatch_after_commit`).

        Only a queue that writes to the actions' database can: its message commits or
        rolls back with the action, so no worker sees one without the other, and the
        start costs no statement after its commit. The default: no.
        """
        return False

    def enqueue_in_start(self, action_id: UUID, when: datetime | None, backlog: int) -> str:
        """Queue the action not yet inserted, inside the start's transaction; the id of
        the message, stored in the action's INSERT (``task_id``).

        Called only when :meth:`enqueues_in_start` said yes, with the owner's other
        unfinished actions (``backlog``, for the priority) counted by the start.
        """
        raise NotImplementedError

    def dispatch_at(self, action_id: UUID, when: datetime) -> None:
        """Dispatch once ``when`` has come (a delayed start, a retry's backoff).

        The default keeps a timer in this process (:class:`~.timers.Timers`); runners
        whose queue can delay work (a Tasks backend's ``run_after``) should override it.
        The time is also stored on the row, so a timer lost with its process is set
        again by the next process's start-up sweep.
        """
        self.timers.schedule(action_id, when)

    def discard(self, action_id: UUID) -> None:
        """A pending action was just cancelled: drop its queued message, if the queue can.

        Optional (the default does nothing): the claim refuses a cancelled action anyway,
        so without it a worker only takes the message and skips it. Never raises.
        """
        return None

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting work and let running actions end; nothing stays running."""
        self.accepting = False
        self.timers.close()

    def close(self) -> None:
        """Release resources when settings change (tests); defaults to shutdown."""
        self.shutdown(timeout=0)

    def check(self) -> Iterable[CheckMessage]:
        """System-check messages about this runner's configuration."""
        return ()


def _alias() -> str:
    """The actions' database: a start's transaction runs there, so its dispatch waits
    for that commit, not for one on ``default``."""
    return router.db_for_write(Action)
