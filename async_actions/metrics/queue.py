"""What waits and what runs: per handler and per worker, read from the database.

The Prometheus gauges and the admin's queue page both read it; it needs no
``prometheus_client``.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any
from uuid import UUID

from django.apps import apps
from django.db.models import Count, Min, Q
from django.utils import timezone

from async_actions.models import Action

#: The worker column for running actions whose worker no task records (thread runner).
UNKNOWN_WORKER = ""


def queue_by_handler(now: datetime | None = None) -> list[dict[str, Any]]:
    """Per handler with active actions: ``pending`` (due now), ``scheduled`` (pending,
    not yet due), ``running``, and ``oldest_pending``, the creation time of the oldest
    due pending action (None when none waits)."""
    now = now or timezone.now()
    due = Q(run_after__isnull=True) | Q(run_after__lte=now)
    pending = Q(status=Action.Status.PENDING)
    rows = (
        Action.objects.active()
        .values("handler")
        .annotate(
            pending=Count("pk", filter=pending & due),
            scheduled=Count("pk", filter=pending & ~due),
            running=Count("pk", filter=Q(status=Action.Status.RUNNING)),
            oldest_pending=Min("created_at", filter=pending & due),
        )
        .order_by("handler")
    )
    return list(rows)


def running_by_worker() -> list[tuple[str, int]]:
    """Running actions per worker id, most loaded first.

    The worker is the one django-tasks-db recorded on the action's task (the last of its
    ``worker_ids``); with another runner, or when the task is gone, it is
    :data:`UNKNOWN_WORKER`.
    """
    running = dict(Action.objects.filter(status=Action.Status.RUNNING).values_list("pk", "task_id"))
    workers = _task_workers([ref for ref in running.values() if _is_uuid(ref)])
    counts = Counter(workers.get(ref, UNKNOWN_WORKER) for ref in running.values())
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _is_uuid(ref: str) -> bool:
    try:
        UUID(ref)
    except ValueError:
        return False
    return True


def _task_workers(refs: list[str]) -> dict[str, str]:
    """Task id -> the worker that took it, from django-tasks-db's table if installed."""
    if not refs or not apps.is_installed("django_tasks_db"):
        return {}
    result_model = apps.get_model("django_tasks_database", "DBTaskResult")  # its app label
    found: dict[str, str] = {}
    for pk, worker_ids in result_model.objects.filter(pk__in=refs).values_list("pk", "worker_ids"):
        if worker_ids:
            found[str(pk)] = str(worker_ids[-1])
    return found
