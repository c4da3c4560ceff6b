"""The bench app on the embedded shape, on SQLite or (``BENCH_PG_NAME``) PostgreSQL, for
bench/bench_pickup.py: how soon a server starts an action another process inserted."""

import os

from bench.settings_peer import *  # noqa: F403

if os.environ.get("BENCH_PG_NAME"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["BENCH_PG_NAME"],
            "USER": os.environ.get("BENCH_PG_USER", "postgres"),
            "HOST": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
        }
    }
ASYNC_ACTIONS = {
    "PICKUP_POLL_INTERVAL": float(os.environ.get("BENCH_PICKUP_POLL", "1.0")),
    "MAX_ACTIVE_PER_OWNER": None,
}
