"""Publishing progress: coalesced database writes and channel-layer pushes.

A handler may call ``set_progress`` in a tight loop. Each call only updates memory and
bumps ``seq``; the database is written at most every ``PROGRESS_DB_INTERVAL`` and the
channel layer pushed at most every ``PUSH_INTERVAL``. The monitor (supervisor) thread
flushes trailing changes and writes the progress of every action running in the process
in one transaction per tick (:func:`store_progress`); the final state is always written
and pushed.
"""

from __future__ import annotations

import collections
import decimal
import json
import logging
import math
import numbers
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, close_old_connections, connections, router, transaction
from django.utils import timezone

from async_actions import events
from async_actions.conf import action_settings
from async_actions.events import EVENT_TYPE, event_for, group_name
from async_actions.exceptions import PayloadError, ProgressError
from async_actions.models import Action
from async_actions.payloads import check_payload, clean_text
from async_actions.push import LAYER_TRIES, Pusher, layer_call, push_action, pusher

__all__ = [
    # Moved; importable from here as before.
    "EVENT_TYPE",
    "LAYER_TRIES",
    "ActionLog",
    "ProgressError",
    "Publisher",
    "Pusher",
    "event_for",
    "group_name",
    "layer_call",
    "push_action",
    "pusher",
    "retention",
    "store_progress",
    "validate_data",
    "validate_percent",
]

logger = logging.getLogger("async_actions")


def validate_percent(percent: Any) -> float:
    """``percent`` as a float from 0 to 100, or ProgressError.

    Only real numbers count: ``"50"`` and ``True`` are mistakes ``float()`` would hide,
    as are NaN and infinities. (``None`` never gets here: it means "unchanged".)
    """
    number = isinstance(percent, numbers.Real | decimal.Decimal) and not isinstance(percent, bool)
    try:
        value = float(percent) if number else math.nan
    except (TypeError, ValueError, OverflowError):
        value = math.nan
    if not math.isfinite(value) or value < 0 or value > 100:
        raise ProgressError(f"percent must be a number from 0 to 100, not {percent!r}")
    return value


def validate_data(data: Any, limit: int | None = None) -> Any:
    limit = action_settings.MAX_PROGRESS_DATA_BYTES if limit is None else limit
    try:
        check_payload(data, "progress data", limit=limit, setting="MAX_PROGRESS_DATA_BYTES")
    except PayloadError as exc:
        raise ProgressError(str(exc)) from None
    return data


class ActionLog:
    """An action's log records, bounded by count and by size; oldest dropped first.

    ``LOG_LIMIT`` alone let a noisy handler store megabytes per action, so the records
    are also kept under ``LOG_LIMIT_BYTES`` (measured as the JSON text stored); one
    record larger than that on its own is kept with its message truncated.
    """

    TRUNCATED = " [truncated]"

    def __init__(self, entries: Any, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max(0, max_entries)
        self.max_bytes = max(0, max_bytes)
        self._entries: collections.deque[tuple[dict[str, Any], int]] = collections.deque()
        self.bytes = 0
        for entry in entries:
            if isinstance(entry, dict):
                self.append(entry)

    def append(self, entry: dict[str, Any]) -> None:
        entry, size = self._fit(entry)
        self._entries.append((entry, size))
        self.bytes += size
        while len(self._entries) > self.max_entries or (
            self.bytes > self.max_bytes and len(self._entries) > 1
        ):
            _old, dropped = self._entries.popleft()
            self.bytes -= dropped

    def __iter__(self) -> Any:
        return (entry for entry, _size in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def _fit(self, entry: dict[str, Any]) -> tuple[dict[str, Any], int]:
        size = len(json.dumps(entry))
        message = entry.get("message")
        if size <= self.max_bytes or not isinstance(message, str):
            return entry, size
        room = self.max_bytes - (size - len(json.dumps(message)))
        # The longest prefix whose JSON, marker included, fits: at most ~17 dumps.
        low, high = 0, len(message)
        while low < high:
            middle = (low + high + 1) // 2
            if len(json.dumps(message[:middle] + self.TRUNCATED)) <= room:
                low = middle
            else:
                high = middle - 1
        entry = {**entry, "message": message[:low] + self.TRUNCATED}
        return entry, len(json.dumps(entry))


class Publisher:
    """Coalesces one running action's progress into writes and pushes.

    Progress is never written on the handler's connection while the handler has a
    transaction open there: the write would be invisible to everyone else until the
    commit, rolled back with the handler's work, could abort that transaction with an
    error of its own, and (on PostgreSQL) would lock the action's row against the
    monitor's heartbeat until the commit. The monitor thread writes it instead, on its
    own connection (docs/basics.md, "Handlers that use transactions").
    """

    def __init__(self, action: Action) -> None:
        self.action_id = action.pk
        # Made in the thread that runs the handler: its connection to the action's
        # database, and how many atomic blocks were open before the handler ran (a test
        # may run actions inside its own transaction; only the handler's own count).
        self._alias = router.db_for_write(type(action))
        self._connection = connections[self._alias]
        self._outer_atomic_depth = len(self._connection.atomic_blocks)
        self._handler = action.handler
        self._created_at = action.created_at
        self._started_at = action.started_at
        self._attempt = action.attempt
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._seq = action.seq
        self._percent = action.percent
        self._message = action.message
        self._data = action.data
        self._log = ActionLog(
            action.log or [],
            max_entries=int(action_settings.LOG_LIMIT),
            max_bytes=int(action_settings.LOG_LIMIT_BYTES),
        )
        self._db_interval = float(action_settings.PROGRESS_DB_INTERVAL)
        self._push_interval = float(action_settings.PUSH_INTERVAL)
        self._max_message = int(action_settings.MAX_MESSAGE_LENGTH)
        self._data_limit = int(action_settings.MAX_PROGRESS_DATA_BYTES)
        self._written_seq = action.seq
        self._pushed_seq = action.seq
        self._log_dirty = False
        self._last_write = 0.0
        self._last_push = 0.0
        self.cancel_requested = action.cancel_requested
        #: Set when the row left ``running`` behind our back (recovered or finished).
        self.lost = False
        self.writes = 0
        #: False for async handlers: the event loop thread must not block on the
        #: database, so the monitor thread writes their progress.
        self.inline_writes = True
        #: Set once the final (or retry) state is written; later updates are dropped so
        #: a late handler cannot push a stale "running" over the end.
        self.closed = False

    # -- called from the handler thread -------------------------------------------------
    def update(self, percent: Any = None, message: Any = None, data: Any = None) -> None:
        if percent is not None:
            percent = validate_percent(percent)
        if message is not None:
            message = clean_text(message, self._max_message)
        if data is not None:
            validate_data(data, self._data_limit)
        now = time.monotonic()
        with self._lock:
            if percent is not None:
                self._percent = percent
            if message is not None:
                self._message = message
            if data is not None:
                self._data = data
            self._seq += 1
            push_due = now - self._last_push >= self._push_interval
            write_due = now - self._last_write >= self._db_interval
        if push_due:
            self.push()
        if (
            write_due
            and self.inline_writes
            and not self._in_transaction_here()
            and self._write_lock.acquire(blocking=False)
        ):
            try:
                self._write()
            finally:
                self._write_lock.release()

    def add_log(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._log.append(entry)
            self._log_dirty = True

    def in_handler_transaction(self) -> bool:
        """Whether the handler has a transaction open on the action's database now.

        Read from the monitor thread too: a length of a list the handler's thread
        changes, which needs no lock to read.
        """
        return len(self._connection.atomic_blocks) > self._outer_atomic_depth

    def _in_transaction_here(self) -> bool:
        """Whether the calling thread has a transaction open (``update`` may come from
        outside the handler: ``service.update_progress`` in a request, say)."""
        conn = connections[self._alias]
        if conn is self._connection:
            return self.in_handler_transaction()
        return bool(conn.in_atomic_block)

    @property
    def on_sqlite(self) -> bool:
        return bool(self._connection.vendor == "sqlite")

    # -- called from the monitor thread -------------------------------------------------
    def flush_due(self, now: float, *, write: bool = True) -> None:
        """Push and write changes that no later ``update`` carried out.

        ``write=False`` pushes only: the monitor passes it while the database cannot
        take a write (a handler's SQLite transaction holds the lock), and writes later.
        """
        with self._lock:
            push_due = self._seq > self._pushed_seq and now - self._last_push >= self._push_interval
        if push_due:
            self.push()
        if write and self.write_due(now):
            with self._write_lock:
                self._write()

    def live_fields(self) -> dict[str, Any] | None:
        """The progress fields newer than any write, for readers in this process; None
        once the final state is written (the row is then the truth)."""
        if self.closed:
            return None
        with self._lock:
            return {
                "percent": self._percent,
                "message": self._message,
                "data": self._data,
                "seq": self._seq,
                "log": list(self._log),
                "cancel_requested": self.cancel_requested,
            }

    # -- internals ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The running state held now (``events.snapshot``), newer than the row."""
        with self._lock:
            return self._snapshot_locked()

    def _snapshot_locked(
        self,
        *,
        status: str = Action.Status.RUNNING,
        percent: float | None = None,
        error: str = "",
        finished_at: datetime | None = None,
        run_after: datetime | None = None,
    ) -> dict[str, Any]:
        """The state held now (or the end's, given its fields), as the row would show it."""
        return events.snapshot(
            action_id=self.action_id,
            handler=self._handler,
            status=status,
            percent=self._percent if percent is None else percent,
            message=self._message,
            data=self._data,
            seq=self._seq,
            attempt=self._attempt,
            error=error,
            cancel_requested=self.cancel_requested,
            created_at=self._created_at,
            started_at=self._started_at,
            finished_at=finished_at,
            run_after=run_after,
        )

    def push(self) -> None:
        if self.closed:
            return
        with self._lock:
            self._last_push = time.monotonic()
            self._pushed_seq = self._seq
            snapshot = self._snapshot_locked()
        pusher.push(self.action_id, snapshot)

    def _write(self) -> None:
        taken = self.take_write()
        if taken is not None:
            self.store(*taken)

    def store(self, fields: dict[str, Any], seq: int, log_dirty: bool) -> None:
        """Write what :meth:`take_write` gave, on condition the row still runs."""
        try:
            updated = (
                Action.objects.primary()
                .filter(pk=self.action_id, status="running")
                .update(**fields)
            )
        except DatabaseError:
            logger.warning("Progress of action %s not written; will retry", self.action_id)
            close_old_connections()
            self.write_failed(log_dirty)
            return
        self.written(seq, updated=bool(updated))

    def write_due(self, now: float) -> bool:
        """Whether a change waits to be written and ``PROGRESS_DB_INTERVAL`` has passed."""
        with self._lock:
            return (self._seq > self._written_seq or self._log_dirty) and (
                now - self._last_write >= self._db_interval
            )

    def take_write(self) -> tuple[dict[str, Any], int, bool] | None:
        """The row fields to write now, the ``seq`` they carry and whether the log is in
        them; None once closed. Call with :attr:`write_lock` held, then :meth:`written`
        or :meth:`write_failed`."""
        if self.closed:
            return None
        with self._lock:
            self._last_write = time.monotonic()
            seq, log_dirty = self._seq, self._log_dirty
            fields: dict[str, Any] = {
                "percent": self._percent,
                "message": self._message,
                "data": self._data,
                "seq": seq,
                "heartbeat_at": timezone.now(),
            }
            if log_dirty:
                fields["log"] = list(self._log)
            self._log_dirty = False
        return fields, seq, log_dirty

    def written(self, seq: int, *, updated: bool) -> None:
        """The fields :meth:`take_write` gave were written (``updated``: the row still
        ran, so the condition matched)."""
        self.writes += 1
        with self._lock:
            self._written_seq = max(self._written_seq, seq)
        if not updated:
            self.lost = True

    def write_failed(self, log_dirty: bool) -> None:
        """The write did not happen: the log is written with the next one."""
        with self._lock:
            self._log_dirty = self._log_dirty or log_dirty

    # -- called by async_actions.lifecycle, which writes the status ---------------------
    @property
    def write_lock(self) -> threading.Lock:
        """Held around a status write, so no progress write of this publisher lands
        between the final fields being taken and written."""
        return self._write_lock

    def final_state(
        self, status: str, *, response: Any = None, error: str = "", traceback: str = ""
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The row fields and the event of the final state (``seq`` bumped once).

        Call with :attr:`write_lock` held; :func:`async_actions.lifecycle.finish` writes
        the fields on condition the row still runs, then :meth:`close` and push.
        """
        now = timezone.now()
        with self._lock:
            self._seq += 1
            self._end_seq_locked()
            percent = 100.0 if status == Action.Status.SUCCEEDED else self._percent
            fields: dict[str, Any] = {
                "percent": percent,
                "message": self._message,
                "data": self._data,
                "seq": self._seq,
                "log": list(self._log),
                "response": response,
                "error": error,
                "traceback": traceback,
                "finished_at": now,
                "heartbeat_at": now,
                "expires_at": now + retention(),
            }
            snapshot = self._snapshot_locked(
                status=status, percent=percent, error=error, finished_at=now
            )
        return fields, snapshot

    def requeue_state(self, *, run_after: Any, note: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The row fields and the event of a return to pending for another attempt.

        Progress restarts (percent 0, message and data cleared) while ``seq`` keeps
        increasing, so watchers see the reset; ``note`` goes to the log. Call with
        :attr:`write_lock` held (see :func:`async_actions.lifecycle.requeue`).
        """
        with self._lock:
            self._seq += 1
            self._end_seq_locked()
            self._percent, self._message, self._data = 0.0, "", None
            self._log.append({"time": time.time(), "level": "WARNING", "message": note})
            fields: dict[str, Any] = {
                "percent": 0.0,
                "message": "",
                "data": None,
                "seq": self._seq,
                "log": list(self._log),
                "run_after": run_after,
                "heartbeat_at": None,
            }
            snapshot = self._snapshot_locked(status="pending", run_after=run_after)
        return fields, snapshot

    def close(self) -> None:
        """The final (or retry) state is written: later updates are dropped, so a late
        handler cannot push a stale "running" over the end."""
        self.closed = True

    def _end_seq_locked(self) -> None:
        """The new ``seq`` belongs to the end state, pushed and written by ``lifecycle``:
        the supervisor must not push or write it meanwhile as a "running" state (a tab
        would see the last progress twice, the second time with the end's ``seq``)."""
        self._pushed_seq = self._written_seq = self._seq


def store_progress(publishers: Iterable[Publisher], now: float) -> None:
    """Write the due progress of many running actions: one transaction per database.

    The supervisor calls this each tick for every action running in the process, so
    the database sees one writer and one commit per interval, not one per action. With
    a hundred handlers on SQLite, each handler thread writing its own row queued them
    all on the database's single write lock (docs/performance.md, "Fan-out").

    An action whose final state is being written (its :attr:`Publisher.write_lock`
    held) is skipped: that write carries everything. If the one transaction fails (a
    row another transaction locks past the supervisor's lock wait, say), each row is
    tried on its own, so one action cannot hold up the others' progress.
    """
    held: list[Publisher] = []
    batches: dict[str, list[tuple[Publisher, dict[str, Any], int, bool]]] = {}
    try:
        for publisher in publishers:
            if not publisher.write_due(now) or not publisher.write_lock.acquire(blocking=False):
                continue
            held.append(publisher)
            taken = publisher.take_write()
            if taken is not None:
                batches.setdefault(publisher._alias, []).append((publisher, *taken))
        for alias, batch in batches.items():
            _store_batch(alias, batch)
    finally:
        for publisher in held:
            publisher.write_lock.release()


def _store_batch(alias: str, batch: list[tuple[Publisher, dict[str, Any], int, bool]]) -> None:
    rows = Action.objects.using(alias)
    try:
        with transaction.atomic(using=alias):
            counts = [
                rows.filter(pk=publisher.action_id, status="running").update(**fields)
                for publisher, fields, _seq, _log_dirty in batch
            ]
    except DatabaseError:
        close_old_connections()
        if len(batch) == 1:
            publisher, fields, seq, log_dirty = batch[0]
            logger.warning("Progress of action %s not written; will retry", publisher.action_id)
            publisher.write_failed(log_dirty)
            return
        logger.warning("Progress of %d actions not written together; writing each", len(batch))
        for publisher, fields, seq, log_dirty in batch:
            publisher.store(fields, seq, log_dirty)
        return
    for (publisher, _fields, seq, _log_dirty), count in zip(batch, counts, strict=True):
        publisher.written(seq, updated=bool(count))


def retention() -> timedelta:
    """How long a finished action is kept (``RETENTION``, a timedelta or seconds)."""
    value = action_settings.RETENTION
    return value if isinstance(value, timedelta) else timedelta(seconds=float(value))
