"""The worker's app for bench/bench_celery_runner.py: the demo's Celery app (which
runs actions) plus plain Celery tasks, so both sides run on the same worker.

Start: ``celery -A bench.celery_runner_app worker --pool prefork --concurrency 2``
(with ``DEMO_PROFILE=celery``).
"""

from __future__ import annotations

import os
import time

import redis

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

from example_project.celery import app  # autodiscovers async_actions.tasks

_redis = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"))


@app.task(name="bench.plain_noop", ignore_result=True)
def plain_noop(key: str) -> None:
    """A no-op task that leaves the time its body ran, so the bench can time it."""
    _redis.rpush(key, time.time())


@app.task(
    name="bench.plain_noop_late", ignore_result=True, acks_late=True, reject_on_worker_lost=True
)
def plain_noop_late(key: str) -> None:
    """The same with ``async_actions.run_action``'s delivery options, so the bench can
    tell what those options cost from what the action's own work costs."""
    _redis.rpush(key, time.time())
