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

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import DatabaseError, IntegrityError, close_old_connections, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from async_actions import concurrency, fairness
from async_actions.models import Action
from async_actions.progress import retention
from async_actions.push import push_action, pusher
from async_actions.signals import action_finished

if TYPE_CHECKING:
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

RUNNING = Action.Status.RUNNING
PENDING = Action.Status.PENDING


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
    # Read before the transaction: on SQLite with deferred transactions a read before
    # the UPDATE would pin a snapshot that a concurrent commit makes unwritable.
    owner, cap = _capped_owner(action_id)
    try:
        with transaction.atomic():
            if owner is not None:
                # Before the UPDATE takes its snapshot: a concurrent claim for the same
                # owner on PostgreSQL waits here, then counts this one as running.
                owner.lock()
            # Read the clock inside the transaction: on SQLite (IMMEDIATE) that is after
            # the write lock is ours, so started_at follows the order claims happen in.
            now = timezone.now()
            claimable = (
                Action.objects.filter(pk=action_id, status=PENDING)
                .filter(Q(run_after__isnull=True) | Q(run_after__lte=now))
                .filter(Q(concurrency_key="") | ~Exists(_older_waiters(now)))
            )
            if owner is not None:
                claimable = claimable.filter(fairness.below_cap(owner, cap))
            won = claimable.update(
                status=RUNNING,
                started_at=now,
                heartbeat_at=now,
                attempt=F("attempt") + 1,
                seq=F("seq") + 1,
            )
            if not won and owner is not None and fairness.at_cap(owner, cap):
                logger.debug("Action %s waits: its owner runs %d actions", action_id, cap)
                return None, True
    except IntegrityError:
        logger.debug("Action %s waits: its concurrency key is busy", action_id)
        return None, True
    if not won:
        return None, False
    return Action.objects.get(pk=action_id), False


def _capped_owner(action_id: UUID | str) -> tuple[fairness.Owner | None, int]:
    """The pending action's owner under ``MAX_RUNNING_PER_OWNER`` (None: not capped), and
    the cap. Should the owner change in between (a login taking over a session's
    actions), this one claim is counted against the old owner."""
    cap = fairness.running_cap()
    if cap is None:
        return None, 0
    row = (
        Action.objects.filter(pk=action_id, status=PENDING)
        .values_list(*fairness.OWNER_FIELDS)
        .first()
    )
    return (fairness.owner_of(*row) if row is not None else None), cap


def _older_waiters(now: Any) -> Any:
    """Due pending actions with the same key created before the outer one."""
    return (
        Action.objects.filter(status=PENDING, concurrency_key=OuterRef("concurrency_key"))
        .exclude(concurrency_key="")
        .filter(Q(run_after__isnull=True) | Q(run_after__lte=now))
        .filter(
            Q(created_at__lt=OuterRef("created_at"))
            | Q(created_at=OuterRef("created_at"), pk__lt=OuterRef("pk"))
        )
    )


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
    concurrency_key: str | None = None,
    on_written: Callable[[], None] | None = None,
) -> bool:
    """Write the final state the publisher holds, if the row still runs; True if written.

    Retries for ``retry_for`` seconds while the database is down, so a short outage
    does not leave the action running. ``action`` (the claimed row) is refreshed and
    handed to ``action_finished``; ``on_written`` runs between the write and the
    after-step (the supervisor lets go of a thread it abandons there).
    """
    with publisher.write_lock:
        fields, snapshot = publisher.final_state(
            status, response=response, error=error, traceback=traceback
        )
        written = _update_running(publisher, status, fields, retry_for)
    if not written:
        return False
    publisher.close()
    if on_written is not None:
        on_written()
    key = action.concurrency_key if action is not None else concurrency_key
    _after_end(publisher.action_id, status, snapshot=snapshot, action=action, key=key)
    return True


def _update_running(
    publisher: Publisher, status: str, fields: dict[str, Any], retry_for: float
) -> bool:
    """UPDATE the row to ``status`` if it is still running; retry a failing database a
    while (test_faults.py holds it)."""
    deadline = time.monotonic() + retry_for
    delay = 0.1
    while True:
        try:
            updated = Action.objects.filter(pk=publisher.action_id, status=RUNNING).update(
                status=status, **fields
            )
            break
        except DatabaseError:
            close_old_connections()
            if time.monotonic() >= deadline:
                logger.exception("State %s of action %s not written", status, publisher.action_id)
                return False
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    publisher.writes += 1
    return bool(updated)


# -- running → pending, by the process that runs it ------------------------------------


def requeue(
    publisher: Publisher,
    *,
    run_after: Any,
    note: str,
    concurrency_key: str = "",
    retry_for: float = 0.0,
) -> bool:
    """Put the running action back to pending for another attempt; True if written.

    The caller (``retries.retry_later``) dispatches it again for ``run_after``.
    """
    with publisher.write_lock:
        fields, snapshot = publisher.requeue_state(run_after=run_after, note=note)
        written = _update_running(publisher, PENDING, fields, retry_for)
    if not written:
        return False
    publisher.close()
    _after_requeue(publisher.action_id, concurrency_key, snapshot=snapshot)
    return True


# -- pending | running → a terminal state, from outside the handler ---------------------


def end(action_id: UUID, status: str, **fields: Any) -> bool:
    """End a pending or running action as ``status`` with ``fields``; True if it did.

    ``service.complete``/``fail`` and the thread runner's shutdown end actions this
    way; a handler still running in this process is the caller's to cancel. Raises
    ``DatabaseError`` (nothing written).
    """
    now = timezone.now()
    with transaction.atomic():  # a savepoint: a failure leaves the caller's transaction usable
        updated = Action.objects.filter(pk=action_id, status__in=Action.ACTIVE_STATUSES).update(
            status=status,
            finished_at=now,
            expires_at=now + retention(),
            seq=F("seq") + 1,
            **fields,
        )
    if updated:
        _after_end(action_id, status)
    return bool(updated)


def cancel_pending(action_id: UUID) -> bool:
    """Cancel an action that has not started; True if it was pending. Raises
    ``DatabaseError`` (nothing written)."""
    now = timezone.now()
    with transaction.atomic():
        updated = Action.objects.filter(pk=action_id, status=PENDING).update(
            status=Action.Status.CANCELLED,
            cancel_requested=True,
            finished_at=now,
            expires_at=now + retention(),
            seq=F("seq") + 1,
        )
    if updated:
        _after_end(action_id, Action.Status.CANCELLED)
    return bool(updated)


# -- running whose worker is lost (the recovery sweep) ---------------------------------


def fail_lost(action_id: UUID, stale: Q, error: str, now: datetime) -> bool:
    """Fail a running action whose worker is gone; ``stale`` is the sweep's condition
    (heartbeat too old), so an action that beat meanwhile is left alone."""
    updated = Action.objects.filter(stale, pk=action_id).update(
        status=Action.Status.FAILED,
        error=error,
        finished_at=now,
        expires_at=now + retention(),
        seq=F("seq") + 1,
    )
    if updated:
        _after_end(action_id, Action.Status.FAILED)
    return bool(updated)


def requeue_lost(action_id: UUID, stale: Q, note: str) -> bool:
    """Send a running action whose worker is gone back to pending for another attempt
    (``stale`` as in :func:`fail_lost`); the sweep dispatches it again."""
    updated = Action.objects.filter(stale, pk=action_id).update(
        status=PENDING,
        message=note,
        percent=0.0,
        run_after=None,
        heartbeat_at=None,
        seq=F("seq") + 1,
    )
    if updated:
        _after_requeue(action_id, None)
    return bool(updated)


# -- after-steps -----------------------------------------------------------------------


def wake_next(key: str) -> None:
    """Dispatch the oldest action waiting for concurrency ``key`` (its dispatch may have
    been lost, or the key just came free). Harmless when the key is still taken."""
    concurrency.release(key)


def _read(action_id: UUID, action: Action | None) -> Action | None:
    """The row as stored now (``action`` refreshed in place when given); on a database
    error ``action`` as it was, else None."""
    try:
        if action is not None:
            action.refresh_from_db()
            return action
        return Action.objects.get(pk=action_id)
    except Action.DoesNotExist:
        return None
    except DatabaseError:
        close_old_connections()
        return action


def _after_end(
    action_id: UUID,
    status: str,
    *,
    snapshot: dict[str, Any] | None = None,
    action: Action | None = None,
    key: str | None = None,
) -> None:
    """What follows every end: push, free the key, free the owner's place, signal."""
    if snapshot is not None:
        pusher.push(action_id, snapshot)
    row = _read(action_id, action)
    if snapshot is None and row is not None:
        push_action(row)
    if key is None:
        key = row.concurrency_key if row is not None else ""
    concurrency.release(key)
    if row is None:
        return
    fairness.wake_after_end(row)
    action_finished.send(sender=Action, action=row, status=status)


def _after_requeue(
    action_id: UUID, key: str | None, *, snapshot: dict[str, Any] | None = None
) -> None:
    """What follows a return to pending: watchers see it waiting, the key's next runs."""
    if snapshot is not None:
        pusher.push(action_id, snapshot)
    if snapshot is None or key is None:
        row = _read(action_id, None)
        if row is None:
            return
        if snapshot is None:
            push_action(row)
        key = row.concurrency_key
    concurrency.release(key)
