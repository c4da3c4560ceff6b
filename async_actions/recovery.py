"""Finding work a dead process left behind, so nothing stays running forever.

A running action's worker writes ``heartbeat_at`` every ``HEARTBEAT_INTERVAL``. One
whose heartbeat is older than ``STALE_AFTER`` lost its worker (killed, crashed, the
machine gone): the sweep fails it ("worker lost") or, when its handler allows more
attempts, sends it back to pending. Pending actions whose dispatch was lost (a crash
between commit and enqueue) are dispatched again; claims are conditional, so a
duplicate dispatch is harmless; still, a pending action that a live queue holds
(waiting behind busy workers) is not dispatched again (``BaseRunner.holds``), so the
queue never grows with the sweeps. Every change is a conditional UPDATE, so sweepers in
several processes never handle one row twice.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from django.db import DatabaseError, close_old_connections
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext, gettext_noop

from async_actions import dispatcher, lifecycle
from async_actions.conf import action_settings
from async_actions.handlers import get_handler
from async_actions.models import Action

logger = logging.getLogger("async_actions")

WORKER_LOST = gettext_noop("The worker running this action stopped responding (worker lost).")


@dataclass
class SweepReport:
    failed: list[UUID] = field(default_factory=list)
    requeued: list[UUID] = field(default_factory=list)
    redispatched: list[UUID] = field(default_factory=list)
    #: Delayed pending actions given a timer again (their process's timer was lost).
    scheduled: list[UUID] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.failed or self.requeued or self.redispatched or self.scheduled)


def stale_before(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(seconds=float(action_settings.STALE_AFTER))


def stale_running(now: datetime | None = None) -> Q:
    """Running actions whose worker has not been heard of for ``STALE_AFTER``."""
    cutoff = stale_before(now)
    return Q(status=Action.Status.RUNNING) & (
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    )


def lost_pending(now: datetime | None = None) -> Q:
    """Pending, due, and older than ``STALE_AFTER``: its dispatch may have been lost."""
    now = now or timezone.now()
    return Q(status=Action.Status.PENDING, created_at__lt=stale_before(now)) & (
        Q(run_after__isnull=True) | Q(run_after__lt=stale_before(now))
    )


def sweep(*, dry_run: bool = False, now: datetime | None = None) -> SweepReport:
    """Fail or requeue stale running actions; dispatch lost pending ones again."""
    now = now or timezone.now()
    report = SweepReport()
    _recover_stale(report, now, dry_run)
    _redispatch_lost(report, now, dry_run)
    _schedule_delayed(report, now, dry_run)
    if report:
        _log_report(report, dry_run)
    return report


def _recover_stale(report: SweepReport, now: datetime, dry_run: bool) -> None:
    """Requeue each stale running action with attempts left, fail the others.

    Each write re-checks staleness (``stale_running(now)``) so a row that came back to
    life since the listing is left alone."""
    stale = list(
        Action.objects.primary().filter(stale_running(now)).values_list("pk", "handler", "attempt")
    )
    for pk, handler_name, attempt in stale:
        handler = get_handler(handler_name)
        retry = handler is not None and attempt < handler.max_attempts
        if dry_run:
            (report.requeued if retry else report.failed).append(pk)
            continue
        if retry:
            assert handler is not None  # retry is only True for a found handler
            note = gettext("Attempt %(attempt)s of %(max)s lost its worker; trying again.") % {
                "attempt": attempt,
                "max": handler.max_attempts,
            }
            if lifecycle.requeue_lost(pk, stale_running(now), note):
                report.requeued.append(pk)
                dispatcher.current().dispatch(pk)
        elif lifecycle.fail_lost(pk, stale_running(now), gettext(WORKER_LOST), now):
            report.failed.append(pk)


def _redispatch_lost(report: SweepReport, now: datetime, dry_run: bool) -> None:
    """Dispatch again the pending actions no live queue holds; wake each keyed queue."""
    waiting = (
        Action.objects.primary().filter(lost_pending(now)).values_list("pk", "concurrency_key")
    )
    keys: set[str] = set()
    unkeyed: list[UUID] = []
    for pk, key in waiting:
        if key:
            keys.add(key)  # the oldest waiter of each key, once the key is free
        else:
            unkeyed.append(pk)
    # Waiting behind busy workers is not lost: only what no live queue holds goes again.
    held = dispatcher.current().holds(unkeyed) if unkeyed else set()
    candidates = [pk for pk in unkeyed if pk not in held]
    if candidates:
        # The rows were read before the queue was asked: one a thread took and finished
        # in between is held nowhere yet no longer pending. Ask the rows again.
        still = set(
            Action.objects.primary()
            .filter(lost_pending(now), pk__in=candidates)
            .values_list("pk", flat=True)
        )
        candidates = [pk for pk in candidates if pk in still]
    for pk in candidates:
        report.redispatched.append(pk)
        if not dry_run:
            dispatcher.current().dispatch(pk)
    if not dry_run:
        for key in keys:
            lifecycle.wake_next(key)


def _schedule_delayed(report: SweepReport, now: datetime, dry_run: bool) -> None:
    """Give delayed pending actions a timer again where timers live in a process.

    A runner whose queue cannot delay work keeps its timers in memory; after a restart
    the new process sets them again from ``run_after`` here (its start-up sweep), so a
    delayed start keeps its time. Rows already due for ``STALE_AFTER`` are
    ``lost_pending``'s; a runner whose queue holds the delay (``supports_defer``) needs
    none of this.
    """
    runner = dispatcher.current()
    if runner.supports_defer:
        return
    rows = dict(
        Action.objects.primary()
        .filter(status=Action.Status.PENDING, run_after__gte=stale_before(now))
        .values_list("pk", "run_after")
    )
    if not rows:
        return
    held = runner.holds(list(rows))
    for pk, when in rows.items():
        if pk in held or when is None:
            continue
        report.scheduled.append(pk)
        if not dry_run:
            runner.dispatch_at(pk, when)


def _log_report(report: SweepReport, dry_run: bool) -> None:
    logger.warning(
        "Recovery: %d failed (worker lost), %d requeued, %d dispatched again, "
        "%d delayed ones scheduled again%s",
        len(report.failed),
        len(report.requeued),
        len(report.redispatched),
        len(report.scheduled),
        " (dry run)" if dry_run else "",
    )


# -- the periodic sweep in each worker process ---------------------------------------

_periodic: threading.Thread | None = None
_periodic_lock = threading.Lock()


def interval() -> float:
    value = action_settings.SWEEP_INTERVAL
    return float(value) if value is not None else float(action_settings.STALE_AFTER) / 2


def start_periodic(*, sweep_now: bool = False) -> None:
    """Sweep every ``SWEEP_INTERVAL`` on a daemon thread (once per process).

    ``async_actions.startup()`` passes ``sweep_now``: the first sweep runs at start-up,
    so a restarted server or worker recovers what its predecessor left without waiting
    for traffic.
    """
    global _periodic
    with _periodic_lock:
        if _periodic is not None and _periodic.is_alive():
            return
        _periodic = threading.Thread(
            target=_loop, args=(sweep_now,), name="async-actions-sweeper", daemon=True
        )
        _periodic.start()


def _loop(sweep_now: bool) -> None:
    if not sweep_now:
        time.sleep(interval())
    while True:
        try:
            sweep()
        except DatabaseError:
            logger.exception("Recovery sweep failed; trying again in %gs", interval())
        except Exception:  # the sweeper must outlive any single bad row
            logger.exception("Recovery sweep failed unexpectedly")
        finally:
            close_old_connections()
        time.sleep(interval())
