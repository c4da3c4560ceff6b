"""The scaled test settings with the CeleryRunner: PostgreSQL, Redis as channel layer and
Celery broker (a database number and queue from the environment, so runs never share).

Used by tests/test_celery_runner.py for its daphne and ``celery -A example_project
worker`` processes, with ``DEMO_PROFILE=celery`` so ``example_project`` loads its Celery
app as a project's ``__init__`` does.
"""

from __future__ import annotations

import os

from tests.settings_scaled import *  # noqa: F403

ASYNC_ACTIONS = {
    **ASYNC_ACTIONS,  # noqa: F405
    "RUNNER": "async_actions.runners.celery.CeleryRunner",
    "TIME_LIMIT_GRACE": 1.0,
}
CELERY_BROKER_URL = os.environ.get("AA_CELERY_BROKER_URL", "redis://127.0.0.1:6379/13")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("AA_CELERY_QUEUE", "aa-tests")
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
