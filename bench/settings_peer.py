"""The demo site plus celery-progress, so ours and the peer are served by one process.

Used by the benchmarks that compare against celery-progress (bench/bench_vs_celery.py,
bench/bench_fanout.py): same daphne, same machine, same run.
"""

import os

from example_project.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "celery_progress", "bench"]  # noqa: F405
ROOT_URLCONF = "bench.urls_peer"
DEBUG = False
LOGGING = {"version": 1, "disable_existing_loggers": False}
CELERY_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
