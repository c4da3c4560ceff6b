"""Test settings: the example project, on SQLite (default) or PostgreSQL.

``AA_TEST_DB=postgres`` selects the PostgreSQL server at ``AA_PG_HOST`` (127.0.0.1).
"""

import os
import tempfile

from example_project.settings import *  # noqa: F403

DB = os.environ.get("AA_TEST_DB", "sqlite")

if DB == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("AA_PG_NAME", "test"),
            "USER": os.environ.get("AA_PG_USER", "postgres"),
            "HOST": os.environ.get("AA_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("AA_PG_PORT", "5432"),
            "TEST": {"NAME": f"test_async_actions_{os.getpid()}"},
        }
    }
else:
    # A file, not shared-cache memory: worker threads need real locking and WAL.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(tempfile.gettempdir(), f"aa_dev_{os.getpid()}.sqlite3"),
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
            "TEST": {"NAME": os.path.join(tempfile.gettempdir(), f"aa_test_{os.getpid()}.sqlite3")},
        }
    }
    if os.environ.get("AA_SQLITE_PATH"):  # a server process a test starts shares one file
        DATABASES["default"]["NAME"] = os.environ["AA_SQLITE_PATH"]

# Two more databases for tests/test_database_routers.py (a router sends the actions to
# "actions" and their reads to "replica"); pytest-django creates them only for tests
# that ask for them.
for _alias in ("actions", "replica"):
    _copy = {**DATABASES["default"], "TEST": dict(DATABASES["default"]["TEST"])}
    if DB == "postgres":
        _copy["TEST"]["NAME"] = f"test_async_actions_{_alias}_{os.getpid()}"
    else:
        _copy["NAME"] = os.path.join(
            tempfile.gettempdir(), f"aa_dev_{_alias}_{os.getpid()}.sqlite3"
        )
        _copy["TEST"]["NAME"] = os.path.join(
            tempfile.gettempdir(), f"aa_test_{_alias}_{os.getpid()}.sqlite3"
        )
    DATABASES[_alias] = _copy

# Uploads and result files of tests that do not set their own MEDIA_ROOT: never the repository.
if not os.environ.get("DEMO_MEDIA_ROOT"):
    MEDIA_ROOT = os.path.join(tempfile.gettempdir(), f"aa_media_{os.getpid()}")

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ASYNC_ACTIONS = {
    "HEARTBEAT_INTERVAL": 0.5,
    "STALE_AFTER": 5.0,
    "CANCEL_POLL_INTERVAL": 0.1,
    "SHUTDOWN_TIMEOUT": 2.0,
    "SHUTDOWN_GRACE": 2.0,
    # Tests sweep explicitly; a background sweep would race their deliberately stale rows.
    "SWEEP_INTERVAL": 3600.0,
    # Many tests run several actions of one owner at once; tests/test_fairness.py runs
    # with the product's limits (on by default) and proves them.
    "MAX_ACTIVE_PER_OWNER": None,
    "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": None,
    "MAX_RUNNING_PER_OWNER": None,
    "DEFAULT_ACTION_PAGE": "async_actions:processing",  # as the example project
    # The test process is the server: actions its tests start run here without
    # startup(), and it does not poll for rows tests create on purpose.
    "RUN_WITHOUT_STARTUP": True,
    "PICKUP_POLL_INTERVAL": None,
}
# Server processes a test starts may shorten recovery (tests/test_restart_recovery.py).
for _key in ("STALE_AFTER", "SWEEP_INTERVAL", "PICKUP_POLL_INTERVAL"):
    if os.environ.get(f"AA_{_key}"):
        ASYNC_ACTIONS[_key] = float(os.environ[f"AA_{_key}"])
# A process that plays "a script, not the server" (tests/test_pickup.py).
if os.environ.get("AA_RUN_WITHOUT_STARTUP") == "0":
    ASYNC_ACTIONS["RUN_WITHOUT_STARTUP"] = False
LOGGING = {"version": 1, "disable_existing_loggers": False}

INSTALLED_APPS = [*INSTALLED_APPS, "django_tasks_db", "tests"]  # noqa: F405
# The TasksRunner tests enqueue on the database backend and run db_worker in-process.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

# The CeleryRunner's in-process tests publish to kombu's in-memory broker; worker tests
# (tests/settings_celery.py) use Redis.
CELERY_BROKER_URL = os.environ.get("AA_CELERY_BROKER_URL", "memory://")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("AA_CELERY_QUEUE", "celery")

ROOT_URLCONF = "tests.urls"  # the example project's URLs plus tests/views.py
