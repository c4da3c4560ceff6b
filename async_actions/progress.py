"""Publishing progress: coalesced database writes and channel-layer pushes.

A handler may call ``set_progress`` in a tight loop. Each call only updates memory and
bumps ``seq``; the database is written at most every ``PROGRESS_DB_INTERVAL`` and the
channel layer pushed at most every ``PUSH_INTERVAL``. The monitor thread flushes
trailing changes, and the final state is always written and pushed.
"""

from __future__ import annotations

import asyncio
import collections
import decimal
import json
import logging
import math
import numbers
import threading
import time
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import DatabaseError, close_old_connections, connections, router
from django.utils import timezone

from async_actions.conf import action_settings
from async_actions.exceptions import PayloadError, ProgressError
from async_actions.payloads import check_payload, clean_text

if TYPE_CHECKING:
    from async_actions.models import Action

logger = logging.getLogger("async_actions")

EVENT_TYPE = "action.update"


def group_name(action_id: UUID | str) -> str:
    """The channel-layer group that carries one action's events."""
    return f"async_actions.{UUID(str(action_id)).hex}"


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


def event_for(snapshot: dict[str, Any], group: str | None = None) -> dict[str, Any]:
    """A channel-layer message; the JSON text is made once, not once per subscriber.

    ``group`` names the action's group in the message, which a hub routes by.
    """
    return {
        "type": EVENT_TYPE,
        "group": group or group_name(snapshot["id"]),
        "seq": snapshot["seq"],
        "status": snapshot["status"],
        "text": json.dumps({"type": "update", "action": snapshot}),
    }


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
            write_due = (self._seq > self._written_seq or self._log_dirty) and (
                now - self._last_write >= self._db_interval
            )
        if push_due:
            self.push()
        if write_due and write:
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
    def snapshot(self, **final: Any) -> dict[str, Any]:
        with self._lock:
            return self._snapshot_locked(**final)

    def _snapshot_locked(self, **final: Any) -> dict[str, Any]:
        return {
            "id": str(self.action_id),
            "handler": self._handler,
            "status": final.get("status", "running"),
            "percent": final.get("percent", self._percent),
            "message": self._message,
            "data": self._data,
            "seq": self._seq,
            "attempt": self._attempt,
            "error": final.get("error", ""),
            "cancel_requested": self.cancel_requested,
            "created_at": _iso(self._created_at),
            "started_at": _iso(self._started_at),
            "finished_at": _iso(final.get("finished_at")),
        }

    def push(self) -> None:
        if self.closed:
            return
        with self._lock:
            self._last_push = time.monotonic()
            self._pushed_seq = self._seq
            snapshot = self._snapshot_locked()
        pusher.push(self.action_id, snapshot)

    def _write(self) -> None:
        from async_actions.models import Action

        if self.closed:
            return
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
        try:
            updated = Action.objects.filter(pk=self.action_id, status="running").update(**fields)
        except DatabaseError:
            logger.warning("Progress of action %s not written; will retry", self.action_id)
            close_old_connections()
            with self._lock:
                self._log_dirty = self._log_dirty or log_dirty
            return
        self.writes += 1
        with self._lock:
            self._written_seq = max(self._written_seq, seq)
        if not updated:
            self.lost = True

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
        from async_actions.models import Action

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
            snapshot = self._snapshot_locked(status="pending")
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


def retention() -> Any:
    from datetime import timedelta

    value = action_settings.RETENTION
    return value if isinstance(value, timedelta) else timedelta(seconds=float(value))


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


class Pusher:
    """Sends events to the channel layer without blocking the caller.

    The in-memory layer only works on the event loop its consumers run on, so events
    for it are handed to that loop thread-safely; other layers (Redis) get a private
    loop thread of their own.
    """

    def __init__(self) -> None:
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._layer_cache: tuple[str | None, Any] | None = None
        self.failures = 0

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the server's loop (called by consumers as they connect)."""
        self._server_loop = loop

    def reset(self) -> None:
        self._layer_cache = None

    def layer(self) -> Any:
        from channels.layers import channel_layers, get_channel_layer

        alias = action_settings.CHANNEL_LAYER
        cached = self._layer_cache
        # Channels builds a new layer when its backends are reset (a settings change in
        # tests): pushing to the one it replaced would reach no consumer.
        if (
            cached is not None
            and cached[0] == alias
            and (cached[1] is None or channel_layers.backends.get(alias) is cached[1])
        ):
            return cached[1]
        layer = None
        if alias:
            try:
                layer = get_channel_layer(alias)
            except Exception:
                logger.exception("Channel layer %r could not be loaded", alias)
        self._layer_cache = (alias, layer)
        return layer

    def push(self, action_id: UUID | str, snapshot: dict[str, Any]) -> None:
        layer = self.layer()
        if layer is None:
            return
        group = group_name(action_id)
        message = event_for(snapshot, group)
        coro_factory = lambda: layer_call(layer.group_send, group, message)  # noqa: E731
        if _is_in_memory(layer):
            loop = self._server_loop
            if loop is None or loop.is_closed():
                return  # no consumer has ever connected in this process: nobody listens
            self._submit(loop, coro_factory)
        else:
            self._submit(self._private_loop(), coro_factory)

    def _submit(self, loop: asyncio.AbstractEventLoop, coro_factory: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(coro_factory())
            task.add_done_callback(self._done)
            return
        try:
            future = asyncio.run_coroutine_threadsafe(coro_factory(), loop)
        except RuntimeError:  # loop closed between the check and the call
            return
        future.add_done_callback(self._done)

    def _done(self, future: Any) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.failures += 1
            if self.failures == 1 or self.failures % 1000 == 0:
                logger.warning("Channel layer push failed (%d so far): %r", self.failures, exc)

    def _private_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._own_loop is None or self._own_loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="async-actions-push", daemon=True
                )
                thread.start()
                self._own_loop = loop
            return self._own_loop


#: Tries of one layer call: each connection pooled before a Redis restart fails once.
LAYER_TRIES = 3


async def layer_call(call: Any, *args: Any) -> Any:
    """Await ``call(*args)``, again after a failure, up to ``LAYER_TRIES`` times in all.

    After Redis restarts, every connection a pool opened before fails its next command
    once; a retried call gets a fresh one. Without it the event lost may be the final one.
    """
    for attempt in range(1, LAYER_TRIES + 1):
        try:
            return await call(*args)
        except asyncio.CancelledError:
            raise
        except Exception:
            if attempt == LAYER_TRIES:
                raise
    return None


def _is_in_memory(layer: Any) -> bool:
    from channels.layers import InMemoryChannelLayer

    return isinstance(layer, InMemoryChannelLayer)


pusher = Pusher()


def push_action(action: Action) -> None:
    """Push the stored state of ``action`` (after a change made outside a publisher)."""
    pusher.push(action.pk, action.snapshot())
