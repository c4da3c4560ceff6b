"""The action table is the queue: a server picks up actions other processes inserted.

In the embedded shape only the server process (the one that called
``async_actions.startup()``) runs actions. A shell, a cron script or a management
command that starts one only inserts its row and exits; the server learns of it here:

- on PostgreSQL with psycopg 3, at once: the inserting process sends ``NOTIFY`` on the
  channel :data:`CHANNEL` with the action's id (:func:`announce`, after its commit),
  and a listener thread in the server, on its own connection, dispatches it;
- elsewhere (SQLite), by a poll every ``PICKUP_POLL_INTERVAL`` seconds: one indexed
  query for pending rows created in the last ``STALE_AFTER`` that this process does not
  hold already. Older ones are the recovery sweep's (``recovery.lost_pending``).

The listener polls once each time it (re)connects, so an announcement sent while it
was away is not lost. A row picked up twice (two servers, a poll racing a dispatch) is
still run once: the claim decides.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from typing import Any
from uuid import UUID

from django.db import DatabaseError, close_old_connections, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from async_actions import lifecycle
from async_actions.conf import action_settings
from async_actions.dispatcher import Dispatcher
from async_actions.models import Action

psycopg: Any
try:  # LISTEN needs psycopg 3's notification iterator; psycopg 2 and SQLite poll
    import psycopg
except ImportError:  # pragma: no cover - the postgres extra installs it
    psycopg = None

logger = logging.getLogger("async_actions")

#: The PostgreSQL NOTIFY channel that carries the ids of new actions.
CHANNEL = "async_actions_new"
#: Seconds the listener waits before connecting again after losing its connection.
RECONNECT_DELAY = 2.0


def _connection() -> BaseDatabaseWrapper:
    return connections[router.db_for_write(Action)]


def notifies() -> bool:
    """Whether this database carries announcements: PostgreSQL through psycopg 3."""
    connection = _connection()
    if connection.vendor != "postgresql":
        return False
    return psycopg is not None


def announce(action_id: UUID) -> None:
    """Tell a listening server that ``action_id`` waits (PostgreSQL; elsewhere a no-op).

    Inside a transaction PostgreSQL delivers the notification at commit; the service
    dispatches after commit, so the row is visible when the server reads it. A lost
    announcement only delays the action until a poll or the sweep finds it.
    """
    connection = _connection()
    if connection.vendor != "postgresql":
        return
    try:
        # Inside a caller's transaction, a savepoint: a failure must not break it.
        savepoint = transaction.atomic(using=connection.alias, savepoint=True)
        guard = savepoint if connection.in_atomic_block else nullcontext()
        with guard, connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, str(action_id)])
    except DatabaseError:
        logger.warning("Could not announce action %s; the server's sweep will find it", action_id)


def waiting_here(runner: Dispatcher) -> list[UUID]:
    """Dispatch the recent pending actions ``runner`` does not hold; return their ids.

    A delayed one is dispatched for its time (a timer), the rest at once. Of actions
    waiting for a concurrency key, the oldest waiter of each free key is woken (a busy
    key's holder wakes the next when it ends).
    """
    since = timezone.now() - action_settings.stale_after
    rows = list(
        Action.objects.primary()
        .filter(status=Action.Status.PENDING, created_at__gte=since)
        .values_list("pk", "run_after", "concurrency_key")
    )
    if not rows:
        return []
    held = runner.holds([pk for pk, _, _ in rows])
    now = timezone.now()
    taken: list[UUID] = []
    keys: set[str] = set()
    for pk, run_after, key in rows:
        if pk in held:
            continue
        if key:
            keys.add(key)
            continue
        taken.append(pk)
        if run_after is not None and run_after > now:
            runner.dispatch_at(pk, run_after)
        else:
            runner.dispatch(pk)
    if keys:
        running = Action.objects.primary().filter(
            status=Action.Status.RUNNING, concurrency_key__in=keys
        )
        for key in keys - set(running.values_list("concurrency_key", flat=True)):
            lifecycle.wake_next(key)
    return taken


class Pickup:
    """One daemon thread that feeds ``runner`` the actions other processes insert."""

    def __init__(self, runner: Dispatcher) -> None:
        self.runner = runner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen (PostgreSQL) or poll; with ``PICKUP_POLL_INTERVAL`` None, do neither."""
        interval = action_settings.PICKUP_POLL_INTERVAL
        if self._thread is not None or interval is None:
            return
        target = self._listen if notifies() else self._poll
        self._thread = threading.Thread(target=target, name="async-actions-pickup", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def mode(self) -> str:
        """The pick-up in use: "listen", "poll" or "off" (for logs and tests)."""
        if self._thread is None:
            return "off"
        return "listen" if self._thread._target == self._listen else "poll"  # type: ignore[attr-defined]

    def _pick_up(self) -> None:
        try:
            taken = waiting_here(self.runner)
        except DatabaseError:
            logger.warning("Could not look for pending actions; trying again")
            taken = []
        finally:
            close_old_connections()
        if taken:
            logger.info("Picked up %d pending action(s) started elsewhere", len(taken))

    def _poll(self) -> None:
        interval = float(action_settings.PICKUP_POLL_INTERVAL or 1.0)
        while not self._stop.wait(interval):
            self._pick_up()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                params = _connection().get_connection_params()
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._pick_up()  # what was announced while nobody listened
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._arrived(note.payload)
            except Exception:  # a lost connection: poll once more as we connect again
                logger.warning(
                    "Pending-action listener lost its connection; reconnecting", exc_info=True
                )
                self._stop.wait(RECONNECT_DELAY)

    def _arrived(self, payload: str) -> None:
        try:
            action_id = UUID(payload)
        except ValueError:
            return
        if action_id not in self.runner.holds([action_id]):
            self.runner.dispatch(action_id)
