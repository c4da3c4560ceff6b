"""The test settings scaled out: PostgreSQL, the Redis channel layer, the TasksRunner.

Used by tests/test_scaleout.py for its daphne and db_worker processes; the database
name and Redis prefix come from the environment so runs never share state.
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("AA_SCALED_DB", "aa_scaled"),
        "USER": os.environ.get("AA_PG_USER", "postgres"),
        "HOST": os.environ.get("AA_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("AA_PG_PORT", "5432"),
    }
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [os.environ.get("AA_REDIS_URL", "redis://127.0.0.1:6379/0")],
            "prefix": os.environ.get("AA_REDIS_PREFIX", "aa-scaled"),
            "channel_capacity": {"async_actions.hub*": 10_000},
        },
    }
}
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
ASYNC_ACTIONS = {
    "RUNNER": "async_actions.runners.tasks.TasksRunner",
    "HEARTBEAT_INTERVAL": 0.5,
    "STALE_AFTER": 3.0,
    "SWEEP_INTERVAL": 0.5,
    "CANCEL_POLL_INTERVAL": 0.2,
    "PUSH_INTERVAL": 0.02,
    # One test user starts 50 actions at once (see tests/settings.py).
    "MAX_ACTIVE_PER_OWNER": None,
    "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": None,
    "MAX_RUNNING_PER_OWNER": None,
}
