"""Removing finished actions once their retention ends, in batches.

Deleting a million rows in one statement would hold locks (and, on SQLite, the whole
database) for as long as it takes; small primary-key batches let running work go on.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from django.db import router, transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from async_actions.models import Action

DEFAULT_BATCH_SIZE = 1000


def expired(now: datetime | None = None) -> QuerySet[Action]:
    """Finished actions whose ``expires_at`` has passed; active ones never expire."""
    return Action.objects.finished().filter(expires_at__lt=now or timezone.now())


def finished_before(moment: datetime) -> QuerySet[Action]:
    """Finished actions that ended before ``moment`` (``--older-than``)."""
    return Action.objects.finished().filter(finished_at__lt=moment)


def summary(queryset: QuerySet[Action]) -> list[tuple[str, str, int]]:
    """(handler, status, count) rows, for telling an operator what goes."""
    rows = queryset.order_by().values("handler", "status").annotate(n=Count("pk"))
    return sorted((row["handler"], row["status"], row["n"]) for row in rows)


def purge(queryset: QuerySet[Action], batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[int]:
    """Delete ``queryset``'s finished rows a batch at a time; yield each batch's count.

    Only finished rows are ever deleted, whatever the queryset, so a purge racing a
    retry or a restart cannot remove work that is still going on.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    queryset = queryset.filter(status__in=Action.TERMINAL_STATUSES).order_by()
    while True:
        pks = list(queryset.values_list("pk", flat=True)[:batch_size])
        if not pks:
            return
        with transaction.atomic(
            using=router.db_for_write(Action)
        ):  # retries of a deleted row keep running: SET_NULL
            deleted = (
                Action.objects.primary()
                .filter(pk__in=pks, status__in=Action.TERMINAL_STATUSES)
                .delete()[0]
            )
        yield deleted
        if len(pks) < batch_size:
            return
