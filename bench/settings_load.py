"""The demo site with the benchmark handlers and a pool sized by BENCH_MAX_WORKERS (the
load benchmark runs every action at once). Needs nothing beyond the dev extra, so CI
runs its small variant (tests/test_load.py)."""

import os

from example_project.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "bench"]  # noqa: F405
DEBUG = False
LOGGING = {"version": 1, "disable_existing_loggers": False}
ASYNC_ACTIONS = {
    **ASYNC_ACTIONS,  # noqa: F405
    "MAX_WORKERS": int(os.environ.get("BENCH_MAX_WORKERS", "210")),
    # One benchmark user runs every action at once, on purpose.
    "MAX_ACTIVE_PER_OWNER": None,
    "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": None,
    "MAX_RUNNING_PER_OWNER": None,
    # ... and watches them from 500 sockets (the defaults close those past 100: 4429).
    "MAX_SOCKETS_PER_OWNER": None,
    "MAX_SOCKETS_PER_OWNER_ACTION": None,
}
