"""Worker processes on PostgreSQL with many actions each (tests/test_worker_concurrency.py).

The TasksRunner on the database Tasks backend, no channel layer (nothing watches), short
liveness intervals; the database name and ``WORKER_CONCURRENCY`` come from the
environment so each test module runs on its own database.
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("AA_WORKERS_DB", "aa_workers"),
        "USER": os.environ.get("AA_PG_USER", "postgres"),
        "HOST": os.environ.get("AA_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("AA_PG_PORT", "5432"),
    }
}
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
ASYNC_ACTIONS = {
    **ASYNC_ACTIONS,  # noqa: F405
    "RUNNER": "async_actions.runners.tasks.TasksRunner",
    "CHANNEL_LAYER": None,
    "HEARTBEAT_INTERVAL": 0.5,
    "STALE_AFTER": 3.0,
    "SWEEP_INTERVAL": 0.5,
    "WORKER_CONCURRENCY": int(os.environ.get("AA_WORKER_CONCURRENCY", "1")),
}
