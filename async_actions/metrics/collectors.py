"""The metrics: counted in this process from the lifecycle signals, gauged from the database.

Counters and histograms are per process, as Prometheus expects: a web process counts the
actions its thread runner runs, a worker the ones it runs (scrape each, or mount the view
where the actions run). The gauges (pending, running, oldest wait) and the queue view
read the shared database at scrape time, so every process reports the same values.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from async_actions.metrics.queue import queue_by_handler
from async_actions.models import Action
from async_actions.push import pusher
from async_actions.signals import action_finished, action_retrying, action_started

__all__ = ["connect", "registry"]

#: Seconds: from a no-op (milliseconds) to long imports (an hour and more).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200)
#: Seconds an action waited for a worker: the start latency users feel.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

#: The package's own registry: it never collides with metrics a site already exposes.
registry = CollectorRegistry(auto_describe=True)

started = Counter(
    "async_actions_started",
    "Attempts whose handler began to run, by handler.",
    ["handler"],
    registry=registry,
)
finished = Counter(
    "async_actions_finished",
    "Actions that reached a final state, by handler and status (succeeded, failed, cancelled).",
    ["handler", "status"],
    registry=registry,
)
retried = Counter(
    "async_actions_retried",
    "Attempts that failed and went back to pending for another, by handler.",
    ["handler"],
    registry=registry,
)
duration = Histogram(
    "async_actions_duration_seconds",
    "Seconds from the start of the last attempt to the final state, by handler and status.",
    ["handler", "status"],
    buckets=DURATION_BUCKETS,
    registry=registry,
)
queue_wait = Histogram(
    "async_actions_queue_wait_seconds",
    "Seconds an attempt waited for a worker: from creation (or its run_after) to its start.",
    ["handler"],
    buckets=WAIT_BUCKETS,
    registry=registry,
)


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max(0.0, (later - earlier).total_seconds())


def on_started(sender: Any, action: Action, **kwargs: Any) -> None:
    started.labels(action.handler).inc()
    due = max(action.created_at, action.run_after) if action.run_after else action.created_at
    wait = _seconds(action.started_at, due)
    if wait is not None:
        queue_wait.labels(action.handler).observe(wait)


def on_finished(sender: Any, action: Action, status: str, **kwargs: Any) -> None:
    finished.labels(action.handler, status).inc()
    took = _seconds(action.finished_at, action.started_at)
    if took is not None:  # a pending action cancelled never ran
        duration.labels(action.handler, status).observe(took)


def on_retrying(sender: Any, action: Action, **kwargs: Any) -> None:
    retried.labels(action.handler).inc()


def connect() -> None:
    """Count from the lifecycle signals in this process (the app's ``ready()`` calls it
    when ``prometheus_client`` is installed); calling it again changes nothing."""
    action_started.connect(on_started, dispatch_uid="async_actions.metrics.started")
    action_finished.connect(on_finished, dispatch_uid="async_actions.metrics.finished")
    action_retrying.connect(on_retrying, dispatch_uid="async_actions.metrics.retrying")


# -- read at scrape time ----------------------------------------------------------------


def _gauges() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily(
            "async_actions_pending",
            "Pending actions due to run now (waiting for a worker), by handler.",
            labels=["handler"],
        ),
        GaugeMetricFamily(
            "async_actions_scheduled",
            "Pending actions waiting for their run_after (a retry's backoff), by handler.",
            labels=["handler"],
        ),
        GaugeMetricFamily(
            "async_actions_running", "Running actions, by handler.", labels=["handler"]
        ),
        GaugeMetricFamily(
            "async_actions_oldest_pending_seconds",
            "Age of the oldest pending action due to run, by handler.",
            labels=["handler"],
        ),
    )


def _push_failures(value: float = 0.0) -> CounterMetricFamily:
    return CounterMetricFamily(
        "async_actions_push_failures",
        "Progress pushes to the channel layer that failed in this process.",
        value=value,
    )


class DatabaseCollector(Collector):
    """Gauges read from the action table at each scrape, and the push failures of this
    process's transport."""

    def describe(self) -> Iterator[Metric]:
        """The names without a query (the registry asks as the collector registers)."""
        yield from _gauges()
        yield _push_failures()

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        pending, scheduled, running, oldest = _gauges()
        for row in queue_by_handler(now):
            pending.add_metric([row["handler"]], row["pending"])
            scheduled.add_metric([row["handler"]], row["scheduled"])
            running.add_metric([row["handler"]], row["running"])
            age = _seconds(now, row["oldest_pending"])
            if age is not None:
                oldest.add_metric([row["handler"]], age)
        yield from (pending, scheduled, running, oldest)
        yield _push_failures(pusher.failures)


registry.register(DatabaseCollector())
