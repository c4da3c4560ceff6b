"""The peer's side: a Celery app on the Redis broker and result backend.

Start a worker with ``celery -A bench.celery_app worker --pool=solo``.
"""

from __future__ import annotations

import os
import time

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(task_default_queue="bench", worker_prefetch_multiplier=1, result_expires=600)


@app.task
def stamp() -> float:
    """Returns when its body started, for the start latency figure."""
    return time.time()
