"""Many actions at once in one django-tasks-db worker process.

``db_worker`` runs one task at a time, so fifty long, mostly waiting actions needed
fifty processes. :class:`WorkerPool` runs ``WORKER_CONCURRENCY`` of django-tasks-db's
own ``Worker`` loops in one process, each on a thread of its own with its own database
connection (Django's connections are per thread; each thread closes its own as it
ends). Every loop claims its next task with django-tasks-db's claim, a
``SELECT ... FOR UPDATE SKIP LOCKED`` in a transaction (exclusive on SQLite), so two
threads of one process compete for tasks exactly as two processes do, and the tasks
table stays the only queue. Liveness is unchanged: the process's supervisor beats the
heartbeat of every action it runs, and the recovery sweep fails or retries the actions
of a worker that died.

Stopping (SIGTERM, SIGINT) follows the thread runner: no thread claims another task;
the running actions get ``SHUTDOWN_TIMEOUT`` seconds to finish, are then asked to cancel
and get ``SHUTDOWN_GRACE`` more; whatever still runs is marked failed, so nothing stays
``running`` for the sweep to find. A second signal skips the waiting.
"""

from __future__ import annotations

import inspect
import logging
import signal
import threading
import time
from typing import Any

from django.db import DatabaseError, close_old_connections, connections
from django.utils.translation import gettext, gettext_noop
from django_tasks_db.management.commands.db_worker import Worker

from async_actions import lifecycle
from async_actions.conf import action_settings
from async_actions.models import Action
from async_actions.supervisor import supervisor

logger = logging.getLogger("async_actions")

SHUTDOWN_ERROR = gettext_noop("The worker shut down while the action was running.")

#: django-tasks-db refuses worker ids of 64 characters or more.
_WORKER_ID_LENGTH = 63

#: Seconds a loop that failed (its database went away) waits before it polls again.
RESTART_DELAY = 1.0


class WorkerPool:
    """``concurrency`` django-tasks-db worker loops on threads of this process.

    ``worker_options`` are the keyword arguments of django-tasks-db's ``Worker`` as
    ``db_worker`` builds them; each loop gets ``worker_id`` plus its number, so the ids
    a task result records stay unique across the pool.
    """

    def __init__(self, concurrency: int, worker_options: dict[str, Any]) -> None:
        if concurrency < 1:
            raise ValueError("A worker pool runs at least one loop.")
        options = dict(worker_options)
        base_id = str(options.pop("worker_id"))
        # Options an older django-tasks-db does not know are dropped, not fatal.
        accepted = inspect.signature(Worker).parameters
        options = {key: value for key, value in options.items() if key in accepted}
        suffix_length = len(str(concurrency)) + 1
        prefix = base_id[: _WORKER_ID_LENGTH - suffix_length]
        self.workers = [
            Worker(**options, worker_id=f"{prefix}-{number}") for number in range(concurrency)
        ]
        self.threads = [
            threading.Thread(
                target=self._loop, args=(worker,), name=f"async-actions-worker-{n}", daemon=True
            )
            for n, worker in enumerate(self.workers)
        ]
        self._stop = threading.Event()
        self._force = threading.Event()

    # -- running ---------------------------------------------------------------------

    def run(self) -> None:
        """Run every loop until all end (``--batch``, ``--max-tasks``) or a stop."""
        logger.info("Worker pool: %d loops in this process", len(self.workers))
        for thread in self.threads:
            thread.start()
        while self._alive() and not self._stop.wait(0.2):
            pass
        if self._stop.is_set():
            self._drain()

    def _loop(self, worker: Any) -> None:
        """One ``Worker.run``; run again after an unexpected error so the pool keeps
        its strength (``db_worker`` would have exited, for its process manager to
        restart it)."""
        try:
            while True:
                try:
                    worker.run()
                    return
                except Exception:
                    if not worker.running:
                        return
                    logger.exception("Worker loop %s failed; polling again", worker.worker_id)
                    close_old_connections()
                    if self._stop.wait(RESTART_DELAY):
                        return
        finally:
            connections.close_all()  # this thread's own connections

    def _alive(self) -> list[threading.Thread]:
        return [thread for thread in self.threads if thread.is_alive()]

    # -- stopping --------------------------------------------------------------------

    def install_signals(self) -> None:
        """Turn SIGTERM, SIGINT (and SIGQUIT) into :meth:`stop`; main thread only."""
        for name in ("SIGINT", "SIGTERM", "SIGQUIT"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        logger.warning("Received %s", signal.strsignal(signum))
        self.stop()

    def stop(self) -> None:
        """Claim no more tasks and let the running ones end; called again, stop now."""
        if self._stop.is_set():
            logger.warning("Stopping now: actions still running are marked failed.")
            self._force.set()
            return
        logger.warning("Shutting down: finishing %d running actions", self._running())
        for worker in self.workers:
            worker.running = False
        self._stop.set()

    def _drain(self) -> None:
        """Wait, ask to cancel, wait, then fail what still runs (the thread runner's rule)."""
        if self._wait_threads(float(action_settings.SHUTDOWN_TIMEOUT)):
            return
        logger.warning("Shutdown: asking %d running actions to cancel", self._running())
        for ctx in supervisor.contexts():
            ctx.cancel("shutdown")
        if self._wait_threads(float(action_settings.SHUTDOWN_GRACE)):
            return
        for pk in supervisor.running_ids():
            try:
                lifecycle.end(pk, Action.Status.FAILED, error=gettext(SHUTDOWN_ERROR))
            except DatabaseError:
                logger.error("Shutdown: could not mark action %s failed", pk)
        connections.close_all()

    def _wait_threads(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for every loop to end; False if one still runs (or a
        second signal came)."""
        deadline = time.monotonic() + timeout
        while self._alive():
            if self._force.is_set() or time.monotonic() >= deadline:
                return False
            self._force.wait(0.05)
        return True

    def _running(self) -> int:
        return len(supervisor.running_ids())
