"""Every change of an action's status, and what follows each one.

An action moves ``pending → running`` (:func:`claim`), ``running → pending`` (:func:`requeue`,
:func:`requeue_lost`) and into a terminal state (:func:`finish`, :func:`end`,
:func:`cancel_pending`, :func:`fail_lost`). Each is one conditional UPDATE, so of two
processes racing for a row one wins and the other changes nothing, followed by one
after-step that only the winner runs:

- after an end (:func:`_after_end`): push the final state to watchers, wake the oldest
  action waiting for the concurrency key, wake the owner's next action waiting under
  ``MAX_RUNNING_PER_OWNER`` (after commit), send ``action_finished``;
- after a requeue (:func:`_after_requeue`): push the waiting state, wake the key's next
  waiter (the action itself waits for ``run_after`` or a new dispatch).

Nothing else in the package writes ``status`` or sends ``action_finished``;
``tests/test_lifecycle.py`` holds that rule. docs/architecture.md has the table of
transitions.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import (
    DatabaseError,
    IntegrityError,
    close_old_connections,
    connections,
    router,
    transaction,
)
from django.db.models import F, Q
from django.utils import timezone

from async_actions import concurrency, fairness, statements
from async_actions.models import Action
from async_actions.progress import retention
from async_actions.push import push_action, pusher
from async_actions.signals import action_finished

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from async_actions.progress import Publisher

__all__ = [
    "cancel_pending",
    "claim",
    "end",
    "fail_lost",
    "finish",
    "requeue",
    "requeue_lost",
    "wake_next",
]

logger = logging.getLogger("async_actions")

# Plain strings: database drivers may adapt an enum member by its name.
RUNNING = str(Action.Status.RUNNING)
PENDING = str(Action.Status.PENDING)


# -- pending → running -----------------------------------------------------------------


def claim(action_id: UUID | str) -> tuple[Action | None, bool]:
    """Move the action from pending to running in one conditional UPDATE.

    Returns the claimed action (or None), and whether it waits for a running action to
    wake it. Only one caller wins, so an action runs once even when its message is
    delivered twice or two workers race for it. A pending action is not claimed before
    its ``run_after``; nor while another action with its concurrency key runs (the
    database's unique index on running keys fails this UPDATE; actions waiting for a
    key run in the order they were created); nor while its owner runs
    ``MAX_RUNNING_PER_OWNER`` already (see :mod:`async_actions.fairness`). Such a
    refusal costs a few indexed queries, so a worker moves on to the next message.
    No after-step: the executor announces ``action_started`` as the handler begins.
    """
    conn = _connection()
    pk = Action._meta.pk.get_db_prep_value(UUID(str(action_id)), conn)
    cap = fairness.running_cap()
    if _one_trip(conn):
        return _claim_in_one_trip(conn, action_id, pk, cap)
    if _one_statement(conn):
        return _claim_in_one_statement(conn, action_id, pk, cap)
    # PostgreSQL reads the owner and takes its lock in one statement, in the transaction.
    in_one = cap is not None and conn.vendor == "postgresql"
    # Elsewhere read before the transaction: on SQLite with deferred transactions a read
    # before the UPDATE would pin a snapshot that a concurrent commit makes unwritable.
    owner = _capped_owner(conn, pk) if cap is not None and not in_one else None
    try:
        with transaction.atomic(using=conn.alias):
            # Before the UPDATE takes its snapshot: a concurrent claim for the same
            # owner on PostgreSQL waits here, then counts this one as running.
            if in_one:
                owner = fairness.lock_owner_of_pending(pk)
            elif owner is not None:
                owner.lock()
            # Read the clock inside the transaction: on SQLite (IMMEDIATE) that is after
            # the write lock is ours, so started_at follows the order claims happen in.
            now = _db_datetime(timezone.now(), conn)
            sql = _claim_sql(conn.vendor, owner.kind if owner is not None else "", cap or 0)
            params: list[Any] = [RUNNING, now, now, pk, PENDING, now, now]
            if owner is not None:
                params += owner.sql("r")[1]
            row = _returning(conn, sql, params, pk)
            if row is None and owner is not None and cap and fairness.at_cap(owner, cap):
                logger.debug("Action %s waits: its owner runs %d actions", action_id, cap)
                return None, True
    except IntegrityError:
        logger.debug("Action %s waits: its concurrency key is busy", action_id)
        return None, True
    return row, False


def _claim_in_one_trip(
    conn: BaseDatabaseWrapper, action_id: UUID | str, pk: Any, cap: int | None
) -> tuple[Action | None, bool]:
    """PostgreSQL outside a transaction: :func:`claim` in one round trip instead of four.

    The statements go in one string, which the server runs as one transaction: under a
    cap, the owner's lock (read from the row), then the UPDATE, whose snapshot follows
    the lock as in :func:`claim` and which counts the running actions of the row's own
    owner (``fairness.same_owner_sql``); without one, the UPDATE alone. A busy key
    fails the string and rolls the lock back with it.
    """
    now = _db_datetime(timezone.now(), conn)
    params: list[Any] = [RUNNING, now, now, pk, PENDING, now, now]
    update = _claim_sql(conn.vendor, "*" if cap is not None else "", cap or 0)
    sql = f"{update} RETURNING {_columns()}"
    if cap is not None:
        sql = f"{fairness.lock_pending_sql()}; {sql}"
        params = [pk, PENDING, *params]
    try:
        results = _results(conn, sql, params)
    except IntegrityError:
        logger.debug("Action %s waits: its concurrency key is busy", action_id)
        return None, True
    rows = results[-1]
    if rows:
        return _from_db(conn, rows[0]), False
    owner = fairness.owner_of(*results[0][0][:3]) if cap is not None and results[0] else None
    if owner is not None and cap and fairness.at_cap(owner, cap):
        logger.debug("Action %s waits: its owner runs %d actions", action_id, cap)
        return None, True
    return None, False


def _claim_in_one_statement(
    conn: BaseDatabaseWrapper, action_id: UUID | str, pk: Any, cap: int | None
) -> tuple[Action | None, bool]:
    """SQLite outside a transaction: :func:`claim` as one ``UPDATE … RETURNING`` in
    autocommit instead of an owner read, BEGIN IMMEDIATE, the UPDATE and COMMIT.

    SQLite takes its write lock as a writing statement starts, before it reads, so the
    statement that counts the running actions of the row's own owner
    (``fairness.same_owner_sql``, as :func:`_claim_in_one_trip` on PostgreSQL) also
    claims, with no claim of another connection in between. Only a refused claim reads
    more, to tell a claim waiting at the owner's cap from an action no longer pending.
    As on PostgreSQL, ``started_at`` is the clock read before the statement.
    """
    now = _db_datetime(timezone.now(), conn)
    params: list[Any] = [RUNNING, now, now, pk, PENDING, now, now]
    sql = _claim_sql(conn.vendor, "*" if cap is not None else "", cap or 0)
    try:
        row = _returning(conn, sql, params, pk)
    except IntegrityError:
        logger.debug("Action %s waits: its concurrency key is busy", action_id)
        return None, True
    if row is not None:
        return row, False
    owner = _capped_owner(conn, pk) if cap is not None else None
    if owner is not None and cap and fairness.at_cap(owner, cap):
        logger.debug("Action %s waits: its owner runs %d actions", action_id, cap)
        return None, True
    return None, False


def _capped_owner(conn: BaseDatabaseWrapper, pk: Any) -> fairness.Owner | None:
    """The pending action's owner under ``MAX_RUNNING_PER_OWNER`` (None: none). Should
    the owner change in between (a login taking over a session's actions), this one
    claim is counted against the old owner."""
    with conn.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(fairness.OWNER_FIELDS)} "
            f"FROM {_quote(conn.vendor, Action._meta.db_table)} WHERE id = %s AND status = %s",
            [pk, PENDING],
        )
        row = cursor.fetchone()
    return fairness.owner_of(*row) if row is not None else None


@functools.cache
def _claim_sql(vendor: str, owner_kind: str, cap: int) -> str:
    """The claim's UPDATE, written once per vendor, owner kind and cap.

    The conditions of :func:`claim`: pending and due; no older due action waiting for
    the same concurrency key; and (with an owner) fewer than ``cap`` of the owner's
    actions running, which ``fairness.Owner.sql`` spells as the ORM's ``Owner.actions``.
    Parameters: status, started_at, heartbeat_at, id, pending, now, now, [owner].
    """
    table = _quote(vendor, Action._meta.db_table)
    sql = (
        f"UPDATE {table} SET status = %s, started_at = %s, heartbeat_at = %s, "
        "attempt = attempt + 1, seq = seq + 1 "
        "WHERE id = %s AND status = %s AND (run_after IS NULL OR run_after <= %s) "
        f"AND (concurrency_key = '' OR NOT EXISTS (SELECT 1 FROM {table} w "
        f"WHERE w.status = '{PENDING}' AND w.concurrency_key = {table}.concurrency_key "
        "AND (w.run_after IS NULL OR w.run_after <= %s) "
        f"AND (w.created_at < {table}.created_at OR (w.created_at = {table}.created_at "
        f"AND w.id < {table}.id))))"
    )
    if owner_kind == "*":  # the row's own owner, whichever kind (one trip, one statement)
        sql += (
            f" AND NOT EXISTS (SELECT 1 FROM {table} r WHERE "
            f"{fairness.same_owner_sql('r', table)} "
            f"AND r.status = '{RUNNING}' LIMIT 1 OFFSET {int(cap) - 1})"
        )
    elif owner_kind:
        condition, _ = fairness.Owner(owner_kind, None).sql("r")
        sql += (
            f" AND NOT EXISTS (SELECT 1 FROM {table} r WHERE {condition} "
            f"AND r.status = '{RUNNING}' LIMIT 1 OFFSET {int(cap) - 1})"
        )
    return sql


# -- running → succeeded | failed | cancelled, by the process that runs it -------------


def finish(
    publisher: Publisher,
    status: str,
    *,
    response: Any = None,
    error: str = "",
    traceback: str = "",
    retry_for: float = 0.0,
    action: Action | None = None,
    on_written: Callable[[], None] | None = None,
) -> bool:
    """Write the final state the publisher holds, if the row still runs; True if written.

    Retries for ``retry_for`` seconds while the database is down, so a short outage
    does not leave the action running. ``action`` (the claimed row) is refreshed and
    handed to ``action_finished``; ``on_written`` runs between the write and the
    after-step (the supervisor lets go of a thread it abandons there).
    """
    owner = None
    if action is not None:
        owner = fairness.owner_of(action.user_id, action.client_address, action.session_key)
    with publisher.write_lock:
        fields, snapshot = publisher.final_state(
            status, response=response, error=error, traceback=traceback
        )
        row, waiting = _update_running(publisher, status, fields, retry_for, owner)
    if row is None:
        return False
    publisher.close()
    if on_written is not None:
        on_written()
    if action is not None:
        _copy_fields(row, action)
        row = action
    _after_end(publisher.action_id, status, snapshot=snapshot, row=row, waiting=waiting)
    return True


def _update_running(
    publisher: Publisher,
    status: str,
    fields: dict[str, Any],
    retry_for: float,
    owner: fairness.Owner | None = None,
) -> tuple[Action | None, list[Any] | None]:
    """UPDATE the row to ``status`` if it is still running; the row as written (or None),
    and ``owner``'s waiting actions when they were read with it (see :func:`_write_running`).

    Retries a failing database a while (test_faults.py holds it)."""
    deadline = time.monotonic() + retry_for
    delay = 0.1
    while True:
        try:
            row, waiting = _write_running(publisher.action_id, status, fields, owner)
            break
        except DatabaseError:
            close_old_connections()
            if time.monotonic() >= deadline:
                logger.exception("State %s of action %s not written", status, publisher.action_id)
                return None, None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    publisher.writes += 1
    return row, waiting


def _write_running(
    action_id: UUID, status: str, fields: dict[str, Any], owner: fairness.Owner | None = None
) -> tuple[Action | None, list[Any] | None]:
    """One UPDATE of a running row to ``status`` and ``fields``, returning the row.

    With the row's ``owner`` under a cap, on PostgreSQL outside a transaction, the same
    round trip takes the owner's lock first and then reads what ``fairness.release``
    would read after the end (the rows of ``fairness.waiting_sql``, also returned; None
    when not read): one transaction, so a claim of the owner either ran before it (and
    its refused action is seen waiting) or runs after it commits (and sees this one
    ended). Taken before the UPDATE, the lock is never waited for while this row is
    locked: a claim waiting on the row for its concurrency key holds that lock.
    """
    conn = _connection()
    names = tuple(fields)
    prepared = [
        Action._meta.get_field(name).get_db_prep_save(value, conn)  # type: ignore[union-attr]
        for name, value in fields.items()
    ]
    pk = Action._meta.pk.get_db_prep_value(action_id, conn)
    sql = _update_running_sql(conn.vendor, names)
    params = [str(status), *prepared, pk, RUNNING]
    cap = fairness.running_cap()
    if owner is None or cap is None or not _one_trip(conn):
        return _returning(conn, sql, params, pk), None
    lock, lock_params = owner.lock_sql()
    waiting, waiting_params = fairness.waiting_sql(owner, cap)
    results = _results(
        conn,
        f"{lock}; {sql} RETURNING {_columns()}; {waiting}",
        [*lock_params, *params, *waiting_params],
    )
    if not results[1]:
        return None, None
    row = _from_db(conn, results[1][0])
    if fairness.owner_of(row.user_id, row.client_address, row.session_key) != owner:
        return row, None  # the owner changed meanwhile (a login took it over): release after
    return row, list(results[2])


@functools.cache
def _update_running_sql(vendor: str, names: Sequence[str]) -> str:
    """``UPDATE … SET status, <names> WHERE id AND status``, once per vendor and field set."""
    fields = [Action._meta.get_field(name) for name in names]
    columns = ", ".join(f"{field.column} = %s" for field in fields)  # type: ignore[union-attr]
    table = _quote(vendor, Action._meta.db_table)
    return f"UPDATE {table} SET status = %s, {columns} WHERE id = %s AND status = %s"


# -- running → pending, by the process that runs it ------------------------------------


def requeue(
    publisher: Publisher,
    *,
    run_after: Any,
    note: str,
    retry_for: float = 0.0,
) -> bool:
    """Put the running action back to pending for another attempt; True if written.

    The caller (``retries.retry_later``) dispatches it again for ``run_after``.
    """
    with publisher.write_lock:
        fields, snapshot = publisher.requeue_state(run_after=run_after, note=note)
        row, _ = _update_running(publisher, PENDING, fields, retry_for)
    if row is None:
        return False
    publisher.close()
    _after_requeue(publisher.action_id, row.concurrency_key, snapshot=snapshot)
    return True


# -- pending | running → a terminal state, from outside the handler ---------------------


def end(action_id: UUID, status: str, **fields: Any) -> bool:
    """End a pending or running action as ``status`` with ``fields``; True if it did.

    ``service.complete``/``fail`` and the thread runner's shutdown end actions this
    way; a handler still running in this process is the caller's to cancel. Raises
    ``DatabaseError`` (nothing written).
    """
    now = timezone.now()
    # A savepoint: a failure leaves the caller's transaction usable.
    with transaction.atomic(using=_connection().alias):
        updated = (
            Action.objects.primary()
            .filter(pk=action_id, status__in=Action.ACTIVE_STATUSES)
            .update(
                status=status,
                finished_at=now,
                expires_at=now + retention(),
                seq=F("seq") + 1,
                **fields,
            )
        )
    if updated:
        _after_end(action_id, status)
    return bool(updated)


def cancel_pending(action_id: UUID) -> bool:
    """Cancel an action that has not started; True if it was pending. Raises
    ``DatabaseError`` (nothing written)."""
    now = timezone.now()
    with transaction.atomic(using=_connection().alias):
        updated = (
            Action.objects.primary()
            .filter(pk=action_id, status=PENDING)
            .update(
                status=Action.Status.CANCELLED,
                cancel_requested=True,
                finished_at=now,
                expires_at=now + retention(),
                seq=F("seq") + 1,
            )
        )
    if updated:
        _after_end(action_id, Action.Status.CANCELLED)
    return bool(updated)


# -- running whose worker is lost (the recovery sweep) ---------------------------------


def fail_lost(action_id: UUID, stale: Q, error: str, now: datetime) -> bool:
    """Fail a running action whose worker is gone; ``stale`` is the sweep's condition
    (heartbeat too old), so an action that beat meanwhile is left alone."""
    return _write_lost(
        action_id,
        stale,
        Action.Status.FAILED,
        error=error,
        finished_at=now,
        expires_at=now + retention(),
    )


def requeue_lost(action_id: UUID, stale: Q, note: str) -> bool:
    """Send a running action whose worker is gone back to pending for another attempt
    (``stale`` as in :func:`fail_lost`); the sweep dispatches it again."""
    return _write_lost(
        action_id, stale, PENDING, message=note, percent=0.0, run_after=None, heartbeat_at=None
    )


def _write_lost(action_id: UUID, stale: Q, status: str, **fields: Any) -> bool:
    """Move a lost running action to ``status`` if ``stale`` still holds, then run the
    after-step of a requeue (``pending``) or of an end."""
    updated = (
        Action.objects.primary()
        .filter(stale, pk=action_id)
        .update(status=status, seq=F("seq") + 1, **fields)
    )
    if updated and status == PENDING:
        _after_requeue(action_id, None)
    elif updated:
        _after_end(action_id, status)
    return bool(updated)


# -- after-steps -----------------------------------------------------------------------


def wake_next(key: str) -> None:
    """Dispatch the oldest action waiting for concurrency ``key`` (its dispatch may have
    been lost, or the key just came free). Harmless when the key is still taken."""
    concurrency.release(key)


def _read(action_id: UUID) -> Action | None:
    """The row as stored now; None if it is gone or the database fails."""
    try:
        return Action.objects.primary().get(pk=action_id)
    except Action.DoesNotExist:
        return None
    except DatabaseError:
        close_old_connections()
        return None


def _after_end(
    action_id: UUID,
    status: str,
    *,
    snapshot: dict[str, Any] | None = None,
    row: Action | None = None,
    waiting: list[Any] | None = None,
) -> None:
    """What follows every end: push, free the key, free the owner's place, signal.

    ``snapshot`` is the end's event when the caller holds it; ``row`` the row as
    written (read here when not given); ``waiting`` the owner's waiting actions when the
    end read them after it committed (:func:`_write_running`).
    """
    if snapshot is not None:
        pusher.push(action_id, snapshot)
    if row is None:
        row = _read(action_id)
        if row is None:
            return
        if snapshot is None:
            push_action(row)
    concurrency.release(row.concurrency_key)
    cap = fairness.running_cap()
    if waiting is not None and cap is not None:
        fairness.dispatch_waiting(waiting, cap)
    else:
        fairness.wake_after_end(row)
    action_finished.send(sender=Action, action=row, status=status)


def _after_requeue(
    action_id: UUID, key: str | None, *, snapshot: dict[str, Any] | None = None
) -> None:
    """What follows a return to pending: watchers see it waiting, the key's next runs."""
    if snapshot is not None:
        pusher.push(action_id, snapshot)
    if snapshot is None or key is None:
        row = _read(action_id)
        if row is None:
            return
        if snapshot is None:
            push_action(row)
        key = row.concurrency_key
    concurrency.release(key)


# -- the statements, written once per vendor -------------------------------------------
# The ORM compiled the claim's conditional UPDATE (Q, Exists, OuterRef) anew on every
# call: most of an action's own cost (docs/performance.md). The hot transitions are SQL
# written once per vendor instead, each returning the row it wrote (RETURNING: SQLite
# 3.35+, PostgreSQL), so nothing reads it back. The rare ones keep the ORM.


def _connection() -> BaseDatabaseWrapper:
    return connections[router.db_for_write(Action)]


def _quote(vendor: str, name: str) -> str:
    """A quoted identifier (double quotes: SQLite and PostgreSQL, the supported vendors)."""
    return f'"{name}"'


def _db_datetime(value: datetime, conn: BaseDatabaseWrapper) -> Any:
    return Action._meta.get_field("started_at").get_db_prep_value(value, conn)


@functools.cache
def _columns() -> str:
    return ", ".join(field.column for field in Action._meta.concrete_fields)


def _returning(
    conn: BaseDatabaseWrapper, sql: str, params: Sequence[Any], pk: Any
) -> Action | None:
    """Run an UPDATE of the row ``pk``; the row as written, or None if it matched none.

    Without ``RETURNING`` (SQLite before 3.35) the row is read after the UPDATE.
    """
    with conn.cursor() as cursor:
        if _can_return(conn):
            cursor.execute(f"{sql} RETURNING {_columns()}", params)
            rows = cursor.fetchall()
        else:
            cursor.execute(sql, params)
            if cursor.rowcount < 1:
                return None
            table = _quote(conn.vendor, Action._meta.db_table)
            cursor.execute(f"SELECT {_columns()} FROM {table} WHERE id = %s", [pk])
            rows = cursor.fetchall()
    return _from_db(conn, rows[0]) if rows else None


def _one_trip(conn: BaseDatabaseWrapper) -> bool:
    """Whether statements may go to the database together in one string, as one
    transaction: PostgreSQL through psycopg 3 binding parameters on the client (Django's
    default), in autocommit (inside the caller's transaction they would not commit)."""
    return statements.batches(conn) and conn.get_autocommit()


def _one_statement(conn: BaseDatabaseWrapper) -> bool:
    """Whether a claim may be one ``UPDATE … RETURNING`` in autocommit: SQLite (3.35+)
    outside any transaction of the caller's, whose write lock the statement takes as it
    starts (inside one, the caller's transaction decides when the lock is taken)."""
    return (
        conn.vendor == "sqlite"
        and conn.get_autocommit()
        and not conn.in_atomic_block
        and _can_return(conn)
    )


def _results(conn: BaseDatabaseWrapper, sql: str, params: Sequence[Any]) -> list[list[Any]]:
    """Run statements sent in one string; the rows of each (none for one without any)."""
    results = []
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        while True:
            results.append(cursor.fetchall() if cursor.description is not None else [])
            if not cursor.nextset():
                return results


def _can_return(conn: BaseDatabaseWrapper) -> bool:
    """Whether the database takes ``UPDATE … RETURNING`` (SQLite from 3.35)."""
    if conn.vendor == "sqlite":
        return bool(conn.Database.sqlite_version_info >= (3, 35))  # type: ignore[attr-defined]
    return bool(conn.vendor == "postgresql")


def _from_db(conn: BaseDatabaseWrapper, values: Sequence[Any]) -> Action:
    """An Action from a row of :func:`_columns`, converted as the ORM converts it."""
    converted = list(values)
    for index, col, converters in _converters(conn.vendor, conn.alias):
        value = converted[index]
        for converter in converters:
            value = converter(value, col, conn)
        converted[index] = value
    return Action.from_db(conn.alias, _attnames(), converted)


@functools.cache
def _attnames() -> list[str]:
    return [field.attname for field in Action._meta.concrete_fields]


@functools.cache
def _converters(vendor: str, alias: str) -> list[tuple[int, Any, list[Any]]]:
    """The ORM's converters of each column that has any, once per database."""
    conn = connections[alias]
    found = []
    for index, field in enumerate(Action._meta.concrete_fields):
        col = field.get_col(Action._meta.db_table)
        field_converters = field.get_db_converters(conn)  # type: ignore[attr-defined]
        converters = [*conn.ops.get_db_converters(col), *field_converters]
        if converters:
            found.append((index, col, converters))
    return found


def _copy_fields(source: Action, target: Action) -> None:
    """Give ``target`` the stored fields of ``source`` (a refresh without a query)."""
    for field in Action._meta.concrete_fields:
        value = getattr(source, field.attname)
        changed = field.is_relation and getattr(target, field.attname) != value
        if changed and field.is_cached(target):  # type: ignore[attr-defined]
            field.delete_cached_value(target)  # type: ignore[attr-defined]
        setattr(target, field.attname, value)
