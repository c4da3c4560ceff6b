"""The public operations on actions; everything else (views, API, admin) calls these.

Expected outcomes come back as values, never as exceptions: a finished action, a
missing one, a database that is down. ``start``/``perform`` answer a
:class:`StartResult` (``.status``, ``.ok``, ``.action``); ``cancel``, ``complete``,
``fail`` and ``update_progress`` answer the :class:`OpStatus` itself, which has the
same ``.status`` and ``.ok``, and a StartResult compares equal to its OpStatus. Every
operation on an existing action takes the :class:`Action` or its id. Each has an
``a``-prefixed twin for async code. Programmer errors (a request that is not JSON)
raise early, as :mod:`async_actions.exceptions`, with a message that says how to fix them.
"""

from __future__ import annotations

import enum
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from asgiref.sync import sync_to_async
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import F, signals

from async_actions import addresses, concurrency, fairness, lifecycle, statements
from async_actions.conf import action_settings
from async_actions.handlers import (
    ActionHandler,
    Handle,
    find_handler_for,
    get_handler,
    importable_path,
    install_starter,
    register_function,
)
from async_actions.models import Action
from async_actions.payloads import check_payload, clean_text
from async_actions.progress import push_action, validate_data, validate_percent
from async_actions.runners import get_runner
from async_actions.schedule import run_after_from
from async_actions.state import ActionState
from async_actions.supervisor import supervisor

__all__ = [
    "ActionState",
    "OpStatus",
    "StartResult",
    "acancel",
    "acomplete",
    "afail",
    "aget",
    "aperform",
    "astart",
    "aupdate_progress",
    "cancel",
    "complete",
    "fail",
    "get",
    "perform",
    "start",
    "update_progress",
]

logger = logging.getLogger("async_actions")

#: The actions table's alias in the start's hand-written counts (``fairness.Owner.sql``).
_ALIAS = "a"


class OpStatus(enum.Enum):
    """The outcome of a service operation."""

    OK = "ok"
    #: No handler name given and none accepts the request, or the name is unknown.
    NO_HANDLER = "no_handler"
    #: The runner is shutting down; try again on another process or later.
    SHUTDOWN_IN_PROGRESS = "shutdown_in_progress"
    #: The database raised; nothing was half-written.
    DB_FAILED = "db_failed"
    #: No action has that id.
    NOT_FOUND = "not_found"
    #: The action already ended; a terminal state never changes.
    ACTION_COMPLETED = "action_completed"
    #: The owner already has ``MAX_ACTIVE_PER_OWNER`` actions pending or running.
    LIMIT_REACHED = "limit_reached"
    #: The handler allows one action per concurrency key at a time, refuses to queue
    #: (``on_busy = "refuse"``), and one is pending or running.
    BUSY = "busy"
    #: The idempotency key already names an unfinished action of this owner with another
    #: handler or request: a repeat must be the same start, or a client that reuses a key
    #: for new work silently gets the old action back.
    KEY_REUSED = "key_reused"

    @property
    def status(self) -> OpStatus:
        """The status itself, so every operation's answer has ``.status``."""
        return self

    @property
    def ok(self) -> bool:
        """Whether the operation did what was asked."""
        return self is OpStatus.OK


class _KeyBusy(Exception):
    """Rolls back a start whose refuse-mode concurrency key turned out to be taken."""


class _LimitReached(Exception):
    """Rolls back a start over ``MAX_ACTIVE_PER_OWNER`` or the per-address limit."""


@dataclass(frozen=True, eq=False)
class StartResult:
    """What a start answers: the status, and the action when there is one."""

    status: OpStatus
    action: Action | None = None
    #: False when an idempotency key returned an action that already existed.
    created: bool = False

    @property
    def ok(self) -> bool:
        return self.status is OpStatus.OK

    def __eq__(self, other: object) -> bool:
        # ``result == OpStatus.OK`` reads the same for a start as for a cancel.
        if isinstance(other, OpStatus):
            return self.status is other
        if isinstance(other, StartResult):
            return (self.status, self.action, self.created) == (
                other.status,
                other.action,
                other.created,
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.status)


def _owner(user: Any, session_key: str | None) -> tuple[Any, str]:
    if user is not None and getattr(user, "is_authenticated", False):
        return user, ""
    return None, session_key or ""


def _check_request(request: Any) -> None:
    check_payload(
        request,
        "The action request",
        limit=int(action_settings.MAX_REQUEST_BYTES),
        setting="MAX_REQUEST_BYTES",
    )


def start(
    handler: str | ActionHandler | Handle | None = None,
    request: Any = None,
    *,
    user: Any = None,
    session_key: str | None = None,
    idempotency_key: str | None = None,
    public_only: bool = False,
    retry_of: Action | None = None,
    client_address: str | None = None,
    action_id: UUID | None = None,
    page: str = "",
    run_after: datetime | timedelta | None = None,
) -> StartResult:
    """Create an action and dispatch it to the runner once the transaction commits.

    ``handler`` is a registered name, a handler, a ``@handler`` handle, or None to let
    each handler's ``can_handle`` choose.
    ``public_only`` is for names that come from clients: only registered, public
    handlers are accepted, and no dotted path is imported. ``client_address`` (an IP
    address; the views pass the request's) is stored on the action; anonymous starts
    are limited per address (``MAX_ACTIVE_PER_ANONYMOUS_ADDRESS``) and share one
    address's place under ``MAX_RUNNING_PER_OWNER``. Without one, no address limit applies.
    ``action_id`` gives the new action its id (a form view stores its uploads under it
    before the start).
    ``page`` is the URL name (reversed with ``pk``) of the page that shows the action;
    the views pass their processing page's, others fall back to ``DEFAULT_ACTION_PAGE``.
    ``run_after`` (an aware datetime, or a timedelta from now) delays the start: the
    action waits in pending and is not claimed before that time (a time already past
    means now); it can be cancelled like any pending action.
    """
    handler, request, address = _validated(handler, request, client_address, idempotency_key)
    when = run_after_from(run_after)
    runner = get_runner()
    if not runner.accepting:
        return StartResult(OpStatus.SHUTDOWN_IN_PROGRESS)
    found = _find(handler, request, public_only)
    if found is None:
        return StartResult(OpStatus.NO_HANDLER)
    owner_user, owner_session = _owner(user, session_key)
    key = idempotency_key or ""
    # Only an idempotency key looks among the owner's actions; building the filter costs
    # about as much as the start's own count.
    owned = _owned(owner_user, owner_session) if key else None
    concurrency_key = concurrency.key_for(found, request)
    try:
        return _create(
            found,
            request,
            runner,
            concurrency_key=concurrency_key,
            owned=owned,
            user=owner_user,
            session_key=owner_session,
            address=address,
            key=key,
            retry_of=retry_of,
            action_id=action_id,
            page=page,
            run_after=when,
        )
    except _KeyBusy:
        return StartResult(OpStatus.BUSY)
    except _LimitReached:
        return StartResult(OpStatus.LIMIT_REACHED)
    except IntegrityError:
        return _lost_race(found, owned, key, request)
    except DatabaseError:
        logger.exception("Could not create action for %s", found.name)
        return StartResult(OpStatus.DB_FAILED)


def _validated(
    handler: str | ActionHandler | Handle | None,
    request: Any,
    client_address: str | None,
    idempotency_key: str | None,
) -> tuple[str | None, Any, str]:
    """The handler's name, the request and the normalized client address of a start;
    a ValueError for arguments a caller got wrong (never an OpStatus: they are bugs)."""
    if isinstance(handler, ActionHandler | Handle):
        handler = handler.name
    request = {} if request is None else request
    _check_request(request)
    address = addresses.normalize(client_address) if client_address else ""
    if client_address and not address:
        raise ValueError(f"client_address must be an IP address, not {client_address!r}.")
    if idempotency_key is not None and len(idempotency_key) > 255:
        raise ValueError("idempotency_key must be at most 255 characters.")
    return handler, request, address


def _find(handler: str | None, request: Any, public_only: bool) -> ActionHandler | None:
    """The handler a start names (only public, registered ones for client-given names),
    or the one whose ``can_handle`` accepts the request."""
    if handler:
        found = get_handler(handler, import_paths=not public_only)
        if found is None or (public_only and not found.public):
            return None
        return found
    return find_handler_for(request)


def _owned(owner_user: Any, owner_session: str) -> Any:
    """The owner's actions: the user's, or (anonymous) the session's."""
    actions = Action.objects.primary()  # a repeat is answered from what is written
    if owner_user:
        return actions.filter(user=owner_user)
    return actions.filter(user__isnull=True, session_key=owner_session)


def _create(
    found: ActionHandler,
    request: Any,
    runner: Any,
    *,
    concurrency_key: str,
    owned: Any,
    user: Any,
    session_key: str,
    address: str,
    key: str,
    retry_of: Action | None,
    action_id: UUID | None = None,
    page: str = "",
    run_after: datetime | None = None,
) -> StartResult:
    """In one transaction: answer a repeated idempotency key with its action, or insert
    the action, check the limits and the concurrency key, and dispatch it on commit.

    Raises ``_LimitReached`` or ``_KeyBusy`` (rolling the INSERT back), or the
    database's error."""
    refuse = bool(concurrency_key) and found.on_busy == "refuse"
    # django-tasks-db on the actions' database: the task is inserted in this transaction,
    # before the action whose INSERT carries its id (one commit, no dispatch after it).
    inline = runner.enqueues_in_start()
    conn = statements.writer()
    # Count before the INSERT where the owner's lock is held from here on: PostgreSQL's
    # advisory lock, or SQLite's write lock taken at BEGIN (``enqueues_in_start``).
    count_first = inline or conn.vendor == "postgresql"
    pk = action_id or uuid4()
    with transaction.atomic(using=conn.alias):
        if key:
            existing = owned.active().filter(idempotency_key=key).first()
            if existing is not None:
                return _repeat(existing, found, request)
        backlog = 0
        if count_first:
            fair = inline and run_after is None and runner.supports_priority
            over, backlog = _locked_counts(
                user, session_key, address, pk, fair, concurrency_key if refuse else ""
            )
            if over:
                raise _LimitReached
            if refuse and concurrency.busy(concurrency_key):
                raise _KeyBusy
        else:
            _lock_owner(user, session_key, address)
            if refuse:
                concurrency.lock(concurrency_key)
        if inline:
            task_id = runner.enqueue_in_start(pk, run_after, backlog)
        else:
            task_id = runner.message_id_for_start()
        action = Action(
            id=pk,
            handler=found.name,
            request=request,
            user=user,
            session_key=session_key,
            client_address=address,
            idempotency_key=key,
            retry_of=retry_of,
            concurrency_key=concurrency_key,
            page=page,
            run_after=run_after,
            task_id=task_id,
        )
        _insert(action, conn.alias)
        if not count_first:
            _check_inserted(action, refuse)
    if not inline:
        runner.dispatch_after_commit(action.pk, run_after, action)
    return StartResult(OpStatus.OK, action, created=True)


def _check_inserted(action: Action, refuse: bool) -> None:
    """SQLite's checks, after the INSERT that takes its write lock: the limits, and a
    refusing handler's concurrency key."""
    if _over_limit(action):
        raise _LimitReached
    if refuse and concurrency.busy(action.concurrency_key, exclude=action.pk):
        raise _KeyBusy


def _insert(action: Action, using: str) -> None:
    """``action.save(force_insert=True)``: the same row and ``pre_save``/``post_save``
    signals, the statement written once (:func:`statements.insert_sql`)."""
    conn = connections[using]
    fields = Action._meta.local_concrete_fields
    sql = statements.insert_sql(using)
    signals.pre_save.send(
        sender=Action, instance=action, raw=False, using=using, update_fields=None
    )
    values = [field.get_db_prep_save(field.pre_save(action, True), conn) for field in fields]
    with conn.cursor() as cursor:
        cursor.execute(sql, values)
    action._state.adding = False
    action._state.db = using
    signals.post_save.send(
        sender=Action, instance=action, created=True, update_fields=None, raw=False, using=using
    )


def _repeat(existing: Action, found: ActionHandler, request: Any) -> StartResult:
    """The answer to a start whose idempotency key names ``existing``: that action if
    the start is the same (handler and request, as stored), else ``KEY_REUSED``."""
    if existing.handler == found.name and existing.request == json.loads(json.dumps(request)):
        return StartResult(OpStatus.OK, existing, created=False)
    return StartResult(OpStatus.KEY_REUSED)


def _lost_race(found: ActionHandler, owned: Any, key: str, request: Any) -> StartResult:
    """After an IntegrityError: a start that lost a race on the idempotency key answers
    with the other start's action."""
    try:
        existing = owned.active().filter(idempotency_key=key).first() if key else None
    except DatabaseError:
        return StartResult(OpStatus.DB_FAILED)
    if existing is None:
        logger.exception("Could not create action for %s", found.name)
        return StartResult(OpStatus.DB_FAILED)
    return _repeat(existing, found, request)


def _lock_owner(user: Any, session_key: str, address: str) -> None:
    """Serialize this owner's starts (PostgreSQL) so racing ones cannot all slip under a
    limit; SQLite's INSERT takes its single write lock."""
    for owner in _limited_owners(user, session_key, address):
        owner.lock()


def _limited_owners(user: Any, session_key: str, address: str) -> list[fairness.Owner]:
    """Whose starts :func:`_lock_owner` serializes: one lock per limit the start is
    counted against, so no limit is guarded by another's lock.

    An anonymous visitor counts twice, against its session (``MAX_ACTIVE_PER_OWNER``)
    and its address (``MAX_ACTIVE_PER_ANONYMOUS_ADDRESS``): one session starting from
    many addresses must not pass its session's limit in parallel. Always the session's
    lock before the address's, so two starts never wait for each other in a circle.
    """
    per_owner = action_settings.MAX_ACTIVE_PER_OWNER is not None
    user_id = getattr(user, "pk", None)
    if user_id is not None:
        return [fairness.Owner("user", user_id)] if per_owner else []
    owners = []
    if per_owner and session_key:
        owners.append(fairness.Owner("session", session_key))
    if action_settings.MAX_ACTIVE_PER_ANONYMOUS_ADDRESS is not None and address:
        owners.append(fairness.Owner("address", address))
    return owners


def _over_limit(action: Action) -> bool:
    """Whether the owner, or (anonymous) the client address, already had its fill of
    active actions before ``action``.

    Counted after the INSERT so that on SQLite the count runs under the write lock.
    """
    over, _backlog = _counts(
        action.user_id, action.session_key, action.client_address, action.pk, fair=False
    )
    return over


def _counts(user_id: Any, session_key: str, address: str, pk: UUID, fair: bool) -> tuple[bool, int]:
    """Whether the owner (or the anonymous client address) is at its limit of active
    actions, and with ``fair`` how many unfinished actions the owner has for the task's
    priority (``fairness.backlog``'s count), the action ``pk`` left out of both.

    One hand-written query, or none when nothing is limited or counted (every start
    runs it; the ORM compiled each count anew).
    """
    counting = _count_sql(user_id, session_key, address, pk, fair)
    if counting is None:
        return False, 0
    sql, params, limits = counting
    with statements.writer().cursor() as cursor:
        cursor.execute(sql, params)
        return _over_and_backlog(cursor.fetchone(), limits)


def _locked_counts(
    user: Any, session_key: str, address: str, pk: UUID, fair: bool, key: str
) -> tuple[bool, int]:
    """:func:`_lock_owner`, :func:`concurrency.lock` of ``key`` (when given), then
    :func:`_counts`, in one round trip where the driver allows it.

    psycopg 3's client-side binding cursors (Django's default) send one execute's
    statements in one message; each statement still takes its own snapshot, so the
    counts see every start that committed before the locks were granted.
    """
    conn = statements.writer()
    queries: list[tuple[str, list[Any]]] = []
    if conn.vendor == "postgresql":
        queries.extend(owner.lock_sql() for owner in _limited_owners(user, session_key, address))
        if key:
            queries.append(concurrency.lock_sql(key))
    counting = _count_sql(getattr(user, "pk", None), session_key, address, pk, fair)
    if counting is not None:
        queries.append(counting[:2])
    if not queries:
        return False, 0
    with conn.cursor() as cursor:
        if statements.batches(conn):
            cursor.execute(
                "; ".join(sql for sql, _params in queries),
                [value for _sql, params in queries for value in params],
            )
            while cursor.nextset():  # to the last statement's result, the counts
                pass
        else:
            for sql, params in queries:
                cursor.execute(sql, params)
        if counting is None:
            return False, 0
        return _over_and_backlog(cursor.fetchone(), counting[2])


def _count_sql(
    user_id: Any, session_key: str, address: str, pk: UUID, fair: bool
) -> tuple[str, list[Any], list[int]] | None:
    """:func:`_counts`'s query, its parameters and the limits its first columns are
    held against (the backlog, when counted, comes after them); None: nothing counted."""
    per_owner = action_settings.MAX_ACTIVE_PER_OWNER
    per_address = action_settings.MAX_ACTIVE_PER_ANONYMOUS_ADDRESS
    conditions: list[tuple[str, list[Any]]] = []  # one COUNT's condition and parameters
    limits: list[int] = []
    conn = statements.writer()
    if per_owner is not None and user_id is not None:
        conditions.append(("a.user_id = %s", [fairness.user_db_value(user_id, conn)]))
        limits.append(int(per_owner))
    elif per_owner is not None and session_key:
        conditions.append(("a.user_id IS NULL AND a.session_key = %s", [session_key]))
        limits.append(int(per_owner))
    if per_address is not None and user_id is None and address:
        conditions.append(("a.user_id IS NULL AND a.client_address = %s", [address]))
        limits.append(int(per_address))
    owner = fairness.owner_of(user_id, address, session_key) if fair else None
    if owner is not None and fairness.running_cap() is not None:
        condition, params = owner.sql(_ALIAS)
        conditions.append((condition, params))
    if not conditions:
        return None
    table = conn.ops.quote_name(Action._meta.db_table)
    db_pk = Action._meta.pk.get_db_prep_value(pk, conn)
    active = [str(status) for status in Action.ACTIVE_STATUSES]
    counts = ", ".join(
        f"(SELECT COUNT(*) FROM {table} {_ALIAS} WHERE {condition} "
        f"AND {_ALIAS}.status IN (%s, %s) AND {_ALIAS}.id <> %s)"
        for condition, _params in conditions
    )
    params = [v for _c, params in conditions for v in (*params, *active, db_pk)]
    return f"SELECT {counts}", params, limits


def _over_and_backlog(found: Sequence[Any], limits: list[int]) -> tuple[bool, int]:
    """:func:`_count_sql`'s row read: over a limit, and the backlog (0 when not counted)."""
    over = any(count >= limit for count, limit in zip(found, limits, strict=False))
    backlog = int(found[len(limits)]) if len(found) > len(limits) else 0
    return over, backlog


def _pk(action_id: Any) -> UUID | None:
    if isinstance(action_id, Action):
        return action_id.pk
    try:
        return UUID(str(action_id))
    except (TypeError, ValueError, AttributeError):
        return None


def _missing_or_done(pk: UUID) -> OpStatus:
    return (
        OpStatus.ACTION_COMPLETED
        if Action.objects.primary().filter(pk=pk).exists()
        else OpStatus.NOT_FOUND
    )


def _push_stored(pk: UUID) -> None:
    """Push the stored state after a change that is no transition (progress, a cancel
    request), so watchers see it at once."""
    try:
        action = Action.objects.primary().get(pk=pk)
    except (Action.DoesNotExist, DatabaseError):
        return
    push_action(action)


def live(action: Action) -> Action:
    """``action`` with what its handler last reported, when it runs in this process.

    The row lags the handler (by ``PROGRESS_DB_INTERVAL``, or by a whole transaction
    that holds SQLite's write lock); every surface reads through this.
    """
    return supervisor.overlay(action)


def get(action_id: Any) -> ActionState | None:
    """The action's state now, or None when no action has that id (or it is no UUID).

    Progress is as fresh as the handler reported it when the action runs in this
    process, else as the database holds it. A database error is raised: unlike the
    operations that change an action, a read has nothing to leave half-done.
    """
    pk = _pk(action_id)
    if pk is None:
        return None
    action = Action.objects.filter(pk=pk).first()
    return None if action is None else ActionState.of(live(action))


def update_progress(
    action_id: Any, percent: float | None = None, message: str | None = None, data: Any = None
) -> OpStatus:
    """Report progress for an action from outside its handler (another process, a hook)."""
    pk = _pk(action_id)
    if pk is None:
        return OpStatus.NOT_FOUND
    local = supervisor.local(pk)
    if local is not None:
        local.set_progress(percent, message, data)
        return OpStatus.OK
    fields: dict[str, Any] = {"seq": F("seq") + 1}
    if percent is not None:
        fields["percent"] = validate_percent(percent)
    if message is not None:
        fields["message"] = clean_text(message, int(action_settings.MAX_MESSAGE_LENGTH))
    if data is not None:
        fields["data"] = validate_data(data)
    try:
        # A savepoint: a failure leaves the caller's transaction usable.
        with transaction.atomic(using=statements.writer().alias):
            updated = (
                Action.objects.primary()
                .filter(pk=pk, status__in=Action.ACTIVE_STATUSES)
                .update(**fields)
            )
        if not updated:
            return _missing_or_done(pk)
    except DatabaseError:
        return OpStatus.DB_FAILED
    _push_stored(pk)
    return OpStatus.OK


def _finish(pk: UUID, status: str, **fields: Any) -> OpStatus:
    try:
        if not lifecycle.end(pk, status, **fields):
            return _missing_or_done(pk)
    except DatabaseError:
        return OpStatus.DB_FAILED
    local = supervisor.local(pk)
    if local is not None:
        local.cancel("ended from outside")  # the handler's own result would be ignored now
    return OpStatus.OK


def complete(action_id: Any, response: Any = None) -> OpStatus:
    """End an action as succeeded with ``response`` (JSON)."""
    pk = _pk(action_id)
    if pk is None:
        return OpStatus.NOT_FOUND
    check_payload(
        response,
        "The response",
        limit=int(action_settings.MAX_RESPONSE_BYTES),
        setting="MAX_RESPONSE_BYTES",
    )
    return _finish(pk, Action.Status.SUCCEEDED, response=response, percent=100.0)


def fail(action_id: Any, error: str) -> OpStatus:
    """End an action as failed; ``error`` is shown to the user, so keep it readable."""
    pk = _pk(action_id)
    if pk is None:
        return OpStatus.NOT_FOUND
    return _finish(pk, Action.Status.FAILED, error=clean_text(error, 10_000))


def cancel(action_id: Any) -> OpStatus:
    """Cancel: a pending action ends at once, a running one is asked to stop."""
    pk = _pk(action_id)
    if pk is None:
        return OpStatus.NOT_FOUND
    try:
        if lifecycle.cancel_pending(pk):
            get_runner().discard(pk)  # its queued message, where the queue can drop one
            return OpStatus.OK
        with transaction.atomic(using=statements.writer().alias):
            requested = (
                Action.objects.primary()
                .filter(pk=pk, status=Action.Status.RUNNING)
                .update(cancel_requested=True)
            )
        if not requested:
            return _missing_or_done(pk)
    except DatabaseError:
        return OpStatus.DB_FAILED
    local = supervisor.local(pk)
    if local is not None:
        local.cancel()
        local.push_state()  # the running publisher owns seq, so it tells the watchers
    else:
        _push_stored(pk)
    return OpStatus.OK


def perform(
    func: Callable[..., Any],
    *legacy_args: Any,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    user: Any = None,
    session_key: str | None = None,
    idempotency_key: str | None = None,
    client_address: str | None = None,
    run_after: datetime | timedelta | None = None,
    **legacy_kwargs: Any,
) -> StartResult:
    """Start ``func(*args, **kwargs)`` as an action; ``func`` must be importable, the
    arguments JSON.

    The target's arguments (``args``, ``kwargs``) stay apart from the start's own
    options (``user``, ``session_key``, ...), so a function may take any parameter
    name. Inside ``func``, :func:`async_actions.context.current` gives the
    ActionContext for progress and cancellation. ``run_after`` delays it as in
    :func:`start`. The older form
    ``perform(func, *args, **kwargs)`` still works, with a DeprecationWarning.
    """
    if legacy_args or legacy_kwargs:
        if args or kwargs is not None:
            raise TypeError(
                "perform() takes the function's arguments either as args=/kwargs= or "
                "(deprecated) inline, not both."
            )
        warnings.warn(
            "perform(func, *args, **kwargs) is deprecated: pass the function's arguments "
            "as perform(func, args=(...), kwargs={...}).",
            DeprecationWarning,
            stacklevel=2,
        )
        args, kwargs = legacy_args, legacy_kwargs
    path = importable_path(func)
    request = {"args": list(args), "kwargs": dict(kwargs or {})}
    check_payload(request, f"Arguments to {path}")
    register_function(path, func)
    return start(
        path,
        request,
        user=user,
        session_key=session_key,
        idempotency_key=idempotency_key,
        client_address=client_address,
        run_after=run_after,
    )


# Async twins: each runs its sync operation in Django's one sync thread
# (``thread_sensitive``), as Django's own async ORM wrappers do, so the database
# connection and any ``transaction.atomic()`` of the caller's sync code are shared safely.


async def astart(
    handler: str | ActionHandler | Handle | None = None,
    request: Any = None,
    **options: Any,
) -> StartResult:
    """:func:`start` for async code."""
    return await sync_to_async(start, thread_sensitive=True)(handler, request, **options)


async def aperform(func: Callable[..., Any], **options: Any) -> StartResult:
    """:func:`perform` for async code; the target's arguments go in ``args=``/``kwargs=``."""
    return await sync_to_async(perform, thread_sensitive=True)(func, **options)


async def aget(action_id: Any) -> ActionState | None:
    """:func:`get` for async code."""
    return await sync_to_async(get, thread_sensitive=True)(action_id)


async def acancel(action_id: Any) -> OpStatus:
    """:func:`cancel` for async code."""
    return await sync_to_async(cancel, thread_sensitive=True)(action_id)


async def acomplete(action_id: Any, response: Any = None) -> OpStatus:
    """:func:`complete` for async code."""
    return await sync_to_async(complete, thread_sensitive=True)(action_id, response)


async def afail(action_id: Any, error: str) -> OpStatus:
    """:func:`fail` for async code."""
    return await sync_to_async(fail, thread_sensitive=True)(action_id, error)


async def aupdate_progress(
    action_id: Any, percent: float | None = None, message: str | None = None, data: Any = None
) -> OpStatus:
    """:func:`update_progress` for async code."""
    return await sync_to_async(update_progress, thread_sensitive=True)(
        action_id, percent, message, data
    )


# ``@handler`` handles start through this service; it sits below, so it is handed down.
install_starter(start)
