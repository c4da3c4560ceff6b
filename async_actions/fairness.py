"""Fair shares of the workers: one owner runs at most ``MAX_RUNNING_PER_OWNER`` actions.

Without a cap, whoever starts most work first fills every worker and everyone else
waits behind their backlog. With it, a claim (``lifecycle.claim``) that would take the
owner over the cap leaves the action pending, so the worker moves on to the next
message, another owner's action. When one of the owner's actions ends, :func:`release`
dispatches the owner's oldest waiting actions, as many as there are free places, the
way :func:`async_actions.concurrency.release` does for concurrency keys.

The owner here is the user; for anonymous work, the client address, because a client
that drops its session cookie is a new session per start but not a new address; the
session when no address is known. Work started from code with no owner is not capped.

The count and the claim are serialized per owner: a transaction-scoped advisory lock on
PostgreSQL (taken before the claim's UPDATE, whose snapshot then sees every committed
claim), SQLite's single writer elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from async_actions import dispatcher, statements
from async_actions.conf import action_settings
from async_actions.models import Action

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("async_actions")

#: Advisory lock namespace (concurrency keys use 0x4A41).
_LOCK_SPACE = 0x4A42
# Plain strings: database drivers may adapt an enum member by its name.
RUNNING, PENDING = str(Action.Status.RUNNING), str(Action.Status.PENDING)
#: The action's user foreign key: its target field prepares and converts user pks.
_USER = Action._meta.get_field("user")
#: The row fields an owner is read from.
OWNER_FIELDS = ("user_id", "client_address", "session_key")


@dataclass(frozen=True)
class Owner:
    """Whose share of the workers an action counts against."""

    kind: str  # "user", "address" or "session"
    value: Any

    def actions(self) -> Q:
        """The condition for this owner's actions."""
        if self.kind == "user":
            return Q(user_id=self.value)
        if self.kind == "address":
            return Q(user__isnull=True, client_address=self.value)
        return Q(user__isnull=True, client_address="", session_key=self.value)

    def sql(self, alias: str) -> tuple[str, list[Any]]:
        """:meth:`actions` as SQL on the table named ``alias``, for hand-written statements
        (``lifecycle.claim``): the same rows, without compiling a ``Q`` per call."""
        if self.kind == "user":
            return f"{alias}.user_id = %s", [user_db_value(self.value, statements.writer())]
        if self.kind == "address":
            return f"{alias}.user_id IS NULL AND {alias}.client_address = %s", [self.value]
        return (
            f"{alias}.user_id IS NULL AND {alias}.client_address = '' AND {alias}.session_key = %s",
            [self.value],
        )

    def lock(self) -> None:
        """Serialize counts and claims for this owner until the transaction ends.

        The lock's key is hashed by PostgreSQL (``hashtext``), so a claim can take it in
        the statement that reads the owner from the row (:func:`lock_owner_of_pending`).
        """
        conn = statements.writer()
        if conn.vendor == "postgresql":
            with conn.cursor() as cursor:
                cursor.execute(*self.lock_sql())

    def lock_sql(self) -> tuple[str, list[Any]]:
        """PostgreSQL: the statement of :meth:`lock`, for a caller that sends it in one
        round trip with the statements it protects (a start's counts, a finish).

        The key is the one ``_LOCK_KEY_SQL`` spells from the row: :func:`owner_of` keeps a
        user's pk as the field's Python value, whose ``str`` is PostgreSQL's ``::text``
        of the column (``42``; a UUID's hyphenated lower-case form), or two claims of one
        owner would take two locks."""
        return "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [
            _LOCK_SPACE,
            f"{self.kind}:{self.value}",
        ]


#: :meth:`Owner.lock`'s key spelled in SQL from the row aliased ``a``, as ``owner_of``
#: chooses the owner (NULL for none: ``pg_advisory_xact_lock`` then takes no lock).
_LOCK_KEY_SQL = (
    "CASE WHEN a.user_id IS NOT NULL THEN 'user:' || a.user_id::text "
    "WHEN a.client_address <> '' THEN 'address:' || a.client_address "
    "WHEN a.session_key <> '' THEN 'session:' || a.session_key END"
)


def lock_owner_of_pending(pk: Any) -> Owner | None:
    """PostgreSQL, in a transaction: the pending action's owner, read and locked
    (:meth:`Owner.lock`) in one statement where a claim used to send two."""
    with statements.writer().cursor() as cursor:
        cursor.execute(lock_pending_sql(), [pk, PENDING])
        row = cursor.fetchone()
    return owner_of(*row[:3]) if row is not None else None


def same_owner_sql(row: str, of: str) -> str:
    """SQL: the row aliased ``row`` has the owner of the row aliased ``of``
    (:func:`owner_of`'s choice, each kind as :meth:`Owner.sql` spells it; a row with no
    owner has none in common). For a statement written before the owner is known
    (``lifecycle.claim`` on PostgreSQL, right after the owner's lock)."""
    r, t = row, of
    return (
        f"(({t}.user_id IS NOT NULL AND {r}.user_id = {t}.user_id) "
        f"OR ({t}.user_id IS NULL AND {t}.client_address <> '' AND {r}.user_id IS NULL "
        f"AND {r}.client_address = {t}.client_address) "
        f"OR ({t}.user_id IS NULL AND {t}.client_address = '' AND {t}.session_key <> '' "
        f"AND {r}.user_id IS NULL AND {r}.client_address = '' "
        f"AND {r}.session_key = {t}.session_key))"
    )


def lock_pending_sql() -> str:
    """:func:`lock_owner_of_pending`'s statement (parameters: id, pending status)."""
    return (
        f"SELECT {', '.join(f'a.{field}' for field in OWNER_FIELDS)}, "
        f"pg_advisory_xact_lock({_LOCK_SPACE}, hashtext({_LOCK_KEY_SQL})) "
        f"FROM {_table()} a WHERE a.id = %s AND a.status = %s"
    )


def owner_of(user_id: Any, client_address: str = "", session_key: str = "") -> Owner | None:
    """The owner an action with these fields counts against (None: not capped).

    ``user_id`` may be a column as read by a hand-written statement (SQLite's 32 hex
    digits for a UUID pk) or the model's value: the owner keeps the field's Python value,
    so both give one owner, one lock key and one :meth:`Owner.sql` parameter."""
    if user_id is not None:
        return Owner("user", _USER.to_python(user_id))
    if client_address:
        return Owner("address", client_address)
    if session_key:
        return Owner("session", session_key)
    return None


def user_db_value(user_id: Any, connection: BaseDatabaseWrapper) -> Any:
    """A user pk as a hand-written statement on ``connection`` binds it: the database
    value of the user model's pk field (SQLite stores a ``UUIDField`` as 32 hex digits,
    so a bound ``uuid.UUID`` fails or matches nothing)."""
    return _USER.get_db_prep_value(user_id, connection)


def running_cap() -> int | None:
    value = action_settings.MAX_RUNNING_PER_OWNER
    return None if value is None else int(value)


def at_cap(owner: Owner, cap: int) -> bool:
    """Whether the owner runs ``cap`` actions (or more) right now."""
    running = Action.objects.primary().filter(owner.actions(), status=Action.Status.RUNNING)
    return running.order_by()[cap - 1 : cap].exists()


def backlog(action_id: Any) -> int:
    """How many other unfinished actions the action's owner has (0: none, or not capped).

    Queues that order by priority (the Tasks runner) put an action behind those of
    owners with less work waiting, so a refused claim is not all a worker does while
    another owner's first action waits at the back of a long queue.
    """
    if running_cap() is None:
        return 0
    try:
        conn = statements.writer()
        pk = Action._meta.pk.get_db_prep_value(action_id, conn)
        with conn.cursor() as cursor:
            cursor.execute(f"SELECT {', '.join(OWNER_FIELDS)} FROM {_table()} WHERE id = %s", [pk])
            row = cursor.fetchone()
            owner = owner_of(*row) if row is not None else None
            if owner is None:
                return 0
            condition, params = owner.sql("a")
            cursor.execute(
                f"SELECT COUNT(*) FROM {_table()} a WHERE {condition} "
                "AND a.status IN (%s, %s) AND a.id <> %s",
                [*params, PENDING, RUNNING, pk],
            )
            return int(cursor.fetchone()[0])
    except DatabaseError:
        logger.debug("Could not count the backlog of action %s", action_id, exc_info=True)
        return 0


def release(owner: Owner | None) -> None:
    """Dispatch the owner's oldest waiting actions, one per free place under the cap.

    Call after one of the owner's actions ends. Harmless when nobody waits, and when
    two releases dispatch the same action (its second claim is a no-op); an action
    refused for the cap always has ``cap`` running ones that each release when they end.
    One hand-written query (it runs after every end): the oldest due waiting actions,
    each with the owner's running count.
    """
    cap = running_cap()
    if owner is None or cap is None:
        return
    sql, params = waiting_sql(owner, cap)
    try:
        with statements.writer().cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
    except DatabaseError:
        logger.exception("Could not look for actions waiting for a place (%s)", owner.kind)
        return
    dispatch_waiting(rows, cap)


def waiting_sql(owner: Owner, cap: int) -> tuple[str, list[Any]]:
    """:func:`release`'s query: the owner's oldest due waiting actions (at most ``cap``),
    each with the owner's running count. ``lifecycle.finish`` sends it with the final
    write on PostgreSQL, after the owner's lock (:meth:`Owner.lock_sql`)."""
    now = statements.writer().ops.adapt_datetimefield_value(timezone.now())
    running, params = owner.sql("r")
    waiting, waiting_params = owner.sql("w")
    return (
        f"SELECT w.id, (SELECT COUNT(*) FROM {_table()} r WHERE {running} "
        f"AND r.status = %s) FROM {_table()} w WHERE {waiting} AND w.status = %s "
        "AND (w.run_after IS NULL OR w.run_after <= %s) "
        f"ORDER BY w.created_at, w.id LIMIT {int(cap)}"
    ), [*params, RUNNING, *waiting_params, PENDING, now]


def dispatch_waiting(rows: Sequence[Sequence[Any]], cap: int) -> None:
    """Dispatch the rows of :func:`waiting_sql` that fit in the free places."""
    free = cap - rows[0][1] if rows else 0
    runner = dispatcher.current()
    for pk, _running in rows[: max(0, free)]:
        runner.dispatch(pk if isinstance(pk, UUID) else UUID(pk))


def _table() -> str:
    return statements.writer().ops.quote_name(Action._meta.db_table)


def wake_after_end(action: Action) -> None:
    """Free the place the ended ``action`` held: :mod:`async_actions.lifecycle` calls this
    after every end (the executor, a time limit, ``service`` finishing or cancelling,
    the recovery sweep).

    After commit: a claim in another connection must see the action ended, or it is
    refused for a place this release meant to give it.
    """
    owner = owner_of(action.user_id, action.client_address, action.session_key)
    if owner is not None and running_cap() is not None:
        transaction.on_commit(partial(release, owner), using=statements.writer().alias)
