"""Settings for the demo site.

Two profiles, chosen by ``DEMO_PROFILE``:

- ``embedded`` (default): SQLite, the in-memory channel layer, the thread runner. One
  process, nothing else to run.
- ``scaled``: PostgreSQL, the Redis channel layer and the Tasks runner on the database
  backend of django-tasks-db: any number of daphne processes and ``db_worker`` processes
  share the work (see docs/deploy.md).
- ``celery``: the scaled profile with the Celery runner instead: ``celery -A
  example_project worker`` processes run the actions, Redis is the broker.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret-7d1f0c2a9b")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "async_actions",
    "example_project.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
ASGI_APPLICATION = "example_project.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "example_project" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {
            # WAL and IMMEDIATE transactions let worker threads write beside requests.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
    }
}

# Channels' in-memory layer, with expiry cleanup that does not grow with each message.
CHANNEL_LAYERS = {"default": {"BACKEND": "async_actions.layers.InMemoryChannelLayer"}}

# Actions started through the API or perform() get the pages of ActionView (urls.py).
ASYNC_ACTIONS: dict = {"DEFAULT_ACTION_PAGE": "async_actions:processing"}

AUTH_PASSWORD_VALIDATORS: list = []
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("de", "Deutsch"), ("ru", "Русский")]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_URL = "media/"
# Uploads and result files (async_actions FILE_STORAGE: the default storage, here).
MEDIA_ROOT = Path(os.environ.get("DEMO_MEDIA_ROOT") or BASE_DIR / "media")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"async_actions": {"handlers": ["console"], "level": "INFO"}},
}

REST_FRAMEWORK = {
    # Token first: an unauthenticated API call gets 401 with WWW-Authenticate: Token.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "django-async-actions demo API",
    "DESCRIPTION": "Start, watch and cancel long-running actions.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- The scaled and celery profiles ---------------------------------------------------
DEMO_PROFILE = os.environ.get("DEMO_PROFILE", "embedded")
if DEMO_PROFILE in ("scaled", "celery"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("DEMO_PG_NAME", "async_actions_demo"),
            "USER": os.environ.get("DEMO_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("DEMO_PG_PASSWORD", ""),
            "HOST": os.environ.get("DEMO_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("DEMO_PG_PORT", "5432"),
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [os.environ.get("DEMO_REDIS_URL", "redis://127.0.0.1:6379/0")],
                "channel_capacity": {"async_actions.hub*": 10_000},
            },
        }
    }
if DEMO_PROFILE == "scaled":
    INSTALLED_APPS.append("django_tasks_db")
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    ASYNC_ACTIONS["RUNNER"] = "async_actions.runners.tasks.TasksRunner"
elif DEMO_PROFILE == "celery":
    # Read by the app in example_project/celery.py (namespace "CELERY").
    CELERY_BROKER_URL = os.environ.get("DEMO_CELERY_BROKER_URL", "redis://127.0.0.1:6379/1")
    CELERY_TASK_DEFAULT_QUEUE = os.environ.get("DEMO_CELERY_QUEUE", "celery")
    CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # long actions: do not hold messages back
    # Celery closes Django's connections around every task unless told to reuse them;
    # the executor closes one that broke, so keep them (a reconnect costs milliseconds).
    CELERY_DB_REUSE_MAX = 1000
    ASYNC_ACTIONS["RUNNER"] = "async_actions.runners.celery.CeleryRunner"
elif DEMO_PROFILE != "embedded":
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"DEMO_PROFILE is {DEMO_PROFILE!r}; use 'embedded' (the default), 'scaled' or 'celery'."
    )
