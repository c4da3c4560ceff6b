"""The embedded runner: a bounded thread pool inside the web server process."""

from __future__ import annotations

import atexit
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from functools import partial
from typing import Any
from uuid import UUID

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.db import DatabaseError, connections
from django.utils.translation import gettext, gettext_noop

from async_actions import lifecycle, recovery
from async_actions.conf import action_settings
from async_actions.executor import execute
from async_actions.models import Action
from async_actions.runners.base import BaseRunner
from async_actions.runners.pickup import Pickup, announce
from async_actions.supervisor import supervisor

logger = logging.getLogger("async_actions")

SHUTDOWN_ERROR = gettext_noop("The server shut down while the action was running.")
#: The cancel reason at shutdown, stored as the cancelled action's error.
SHUTDOWN_CANCEL = gettext_noop(
    "Cancelled because the process running it (pid {pid}) stopped before the action "
    "finished. Start actions from a server process (one that called "
    "async_actions.startup()), or use a worker runner, for work that must outlive the "
    "process that starts it."
)


class ThreadRunner(BaseRunner):
    """Runs actions on up to ``MAX_WORKERS`` daemon threads of the server process.

    Only a process that called ``async_actions.startup()`` (which calls :meth:`start`)
    runs actions: any other process (a shell, cron, a management command) only inserts
    them and leaves them pending for the server, which picks them up
    (:mod:`~async_actions.runners.pickup`). ``RUN_WITHOUT_STARTUP`` makes every process
    run its own (test suites). Threads are daemons so a stuck handler cannot hold the
    process open; shutdown (at exit or SIGTERM) waits ``SHUTDOWN_TIMEOUT``, asks the
    rest to cancel, waits ``SHUTDOWN_GRACE``, and marks whatever still runs as failed.
    """

    runs_in_process = True
    can_hold = True  # its queue and running set: ``holds`` answers from them

    def __init__(self, max_workers: int | None = None) -> None:
        super().__init__()
        self.max_workers = int(max_workers or action_settings.MAX_WORKERS)
        self._queue: queue.SimpleQueue[UUID | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = 0
        self._active: set[UUID] = set()
        self._active_changed = threading.Condition(self._lock)
        self._closed = False
        #: Threads given up on after a hard time limit; they end when their handler does.
        self._abandoned: set[threading.Thread] = set()
        self._spawned = 0
        #: Ids put on the queue and not yet taken by a thread: a second dispatch is a no-op.
        self._queued: set[UUID] = set()
        self._started = False
        #: Set by start(): this process is a server, so it runs what anyone starts.
        self._serving = False
        self._pickup: Pickup | None = None

    def start(self) -> None:
        """Make this process the server: install the shutdown hooks (atexit, SIGTERM),
        start recovery (a first sweep at once) and the pick-up of actions other
        processes insert; once.

        ``async_actions.startup()`` calls it as the server starts. Without it this
        process runs nothing (unless ``RUN_WITHOUT_STARTUP``, where the first dispatch
        starts the hooks and the sweeper, sweeping from one ``SWEEP_INTERVAL`` on).
        """
        with self._lock:
            if self._serving or self._closed:
                return
            self._serving = True
        self._start(sweep_now=True)
        self._pickup = Pickup(self)
        self._pickup.start()

    @property
    def runs_here(self) -> bool:
        """Whether actions dispatched in this process run in this process."""
        return self._serving or action_settings.RUN_WITHOUT_STARTUP

    def _start(self, *, sweep_now: bool) -> None:
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
        atexit.register(self.shutdown)
        _install_sigterm()
        recovery.start_periodic(sweep_now=sweep_now)

    def dispatch(self, action_id: UUID) -> None:
        if not self.accepting:
            return  # stays pending; recovery picks it up after the restart
        action_id = UUID(str(action_id))
        if not self.runs_here:
            self._leave_to_server(action_id)
            return
        self.run_here(action_id)

    def dispatch_at(self, action_id: UUID, when: datetime) -> None:
        if not self.runs_here:
            self._leave_to_server(UUID(str(action_id)))
            return
        super().dispatch_at(action_id, when)

    def _leave_to_server(self, action_id: UUID) -> None:
        """Not a server: the row stays pending; tell a listening server (PostgreSQL)."""
        logger.info(
            "Action %s left pending for the server: this process did not call "
            "async_actions.startup(), so it runs no actions (docs/deploy.md, "
            "'Actions started outside the server')",
            action_id,
        )
        announce(action_id)

    def run_here(self, action_id: UUID) -> None:
        """Run the action on this process's pool, server or not.

        ``async_actions_run`` uses it to run its action in the foreground; a process
        that is not a server then shuts down as one does (its exit cancels what it
        still runs, saying why).
        """
        if not self.accepting:
            return
        action_id = UUID(str(action_id))
        self._start(sweep_now=False)
        with self._lock:
            if action_id in self._queued:
                return  # already waiting for a thread: queued once, however often sent
            # (An id being run may be sent again on purpose: a retry's timer.)
            self._queued.add(action_id)
            self._queue.put(action_id)
            if self._idle == 0 and len(self._threads) < self.max_workers:
                self._start_thread_locked()
            else:
                self._idle = max(0, self._idle - 1)

    def _start_thread_locked(self) -> None:
        self._spawned += 1
        thread = threading.Thread(
            target=self._work, name=f"async-actions-{self._spawned}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            action_id = self._queue.get()
            if action_id is None or not self.accepting:
                break
            with self._lock:
                self._queued.discard(action_id)
                self._active.add(action_id)
            try:
                execute(action_id, runner=self, on_abandon=partial(self._abandon, me, action_id))
            except BaseException:  # the pool keeps its strength, whatever ran
                logger.exception("Runner thread failed on action %s", action_id)
            finally:
                with self._lock:
                    abandoned = me in self._abandoned
                    self._abandoned.discard(me)
                    if not abandoned:
                        self._active.discard(action_id)
                        self._idle += 1
                        self._active_changed.notify_all()
            if abandoned:
                break  # a replacement took this thread's slot
        connections.close_all()  # this thread's own connections, kept between actions

    def _abandon(self, thread: threading.Thread, action_id: UUID) -> None:
        """Give up on a thread stuck past a hard time limit and start one in its place."""
        with self._lock:
            if thread not in self._threads:
                return
            self._threads.remove(thread)
            self._abandoned.add(thread)
            self._active.discard(action_id)
            self._active_changed.notify_all()
            if self.accepting:
                self._start_thread_locked()
                if self._queue.empty():  # else it takes an action that is already queued
                    self._idle += 1

    @property
    def abandoned_count(self) -> int:
        """Threads still stuck in handlers that ignored their time limit."""
        with self._lock:
            return len(self._abandoned)

    def holds(self, action_ids: Iterable[UUID]) -> set[UUID]:
        timed = self.timers.waiting()
        with self._lock:
            return {
                pk for pk in action_ids if pk in self._queued or pk in self._active or pk in timed
            }

    @property
    def queued_count(self) -> int:
        """Actions waiting on this pool's queue for a free thread."""
        with self._lock:
            return len(self._queued)

    @property
    def active_count(self) -> int:
        with self._lock:
            return len(self._active)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no action runs here; True if that happened in time."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._active:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._active_changed.wait(remaining)
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.accepting = False
        self.timers.close()  # delayed actions stay pending; the next server sets them again
        if self._pickup is not None:
            self._pickup.stop()
        wait = float(action_settings.SHUTDOWN_TIMEOUT if timeout is None else timeout)
        if not self.wait_idle(wait):
            logger.warning("Shutdown: asking %d running actions to cancel", self.active_count)
            for ctx in supervisor.contexts():
                if ctx.action_id in self._active:
                    ctx.cancel("shutdown", error=gettext(SHUTDOWN_CANCEL).format(pid=os.getpid()))
            self.wait_idle(float(action_settings.SHUTDOWN_GRACE))
        with self._lock:
            left = list(self._active)
        if left:
            _mark_failed(left, gettext(SHUTDOWN_ERROR))
        for _ in self._threads:
            self._queue.put(None)

    def close(self) -> None:
        atexit.unregister(self.shutdown)
        self.shutdown(timeout=0)

    def check(self) -> Iterable[checks.CheckMessage]:
        if self.max_workers < 1:
            yield checks.Error(
                "ASYNC_ACTIONS['MAX_WORKERS'] must be at least 1.", id="async_actions.E010"
            )
        if not action_settings.RUN_WITHOUT_STARTUP and not _serves_asgi():
            # The only other sign of it is an INFO line per action: a WSGI site (plain
            # runserver, gunicorn) never imports asgi.py, so startup() never runs here.
            yield checks.Warning(
                "The thread runner runs actions only in a process that called "
                "async_actions.startup() (your asgi.py), and this site names no ASGI "
                "server: 'daphne' is not in INSTALLED_APPS and ASGI_APPLICATION is unset. "
                "Served over WSGI (runserver without daphne, gunicorn), every action "
                "stays pending.",
                hint="Serve the site over ASGI as docs/quickstart.md does ('daphne' first "
                "in INSTALLED_APPS, ASGI_APPLICATION, startup() at the end of asgi.py), or "
                "use a worker runner (docs/deploy.md). Served by uvicorn or hypercorn "
                "through such an asgi.py already? Set ASGI_APPLICATION to it, or add "
                "'async_actions.W011' to SILENCED_SYSTEM_CHECKS.",
                id="async_actions.W011",
            )


def _serves_asgi() -> bool:
    """Whether the settings name an ASGI server: daphne's runserver, or an ASGI app."""
    return apps.is_installed("daphne") or bool(getattr(settings, "ASGI_APPLICATION", None))


def _mark_failed(ids: list[UUID], error: str) -> None:
    """Fail actions still running at shutdown the usual way: expiry, push, key release."""
    for pk in ids:
        try:
            lifecycle.end(pk, Action.Status.FAILED, error=error)
        except DatabaseError:
            logger.error("Shutdown: could not mark action %s failed", pk)


def _install_sigterm() -> None:
    """Turn SIGTERM into a normal exit so atexit shutdown runs.

    Only when nobody else handles SIGTERM (daphne and uvicorn do, and exit normally).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    except (ValueError, OSError):  # pragma: no cover - exotic embedders
        pass


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(128 + signum)
