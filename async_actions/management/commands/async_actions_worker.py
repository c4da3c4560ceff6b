"""``manage.py async_actions_worker``: django-tasks-db's ``db_worker`` that recovers at once.

It takes every option of ``db_worker`` and calls ``async_actions.startup()`` before the
worker loop, so a worker sweeps from its start instead of from its first task: after a
crash the surviving workers may all be fresh and idle. django-tasks-db has no worker-start
hook or signal to attach this to, and guessing the command from ``sys.argv`` would start
threads in processes that only share the name.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils.autoreload import DJANGO_AUTORELOAD_ENV

import async_actions

DBWorkerCommand: type[BaseCommand] | None
try:
    from django_tasks_db.management.commands.db_worker import Command as _DBWorker

    DBWorkerCommand = _DBWorker
except ImportError:  # pragma: no cover - django-tasks-db is an optional dependency
    DBWorkerCommand = None


if DBWorkerCommand is not None:

    class Command(DBWorkerCommand):  # type: ignore[misc,valid-type]
        help = "Run django-tasks-db's db_worker with async_actions recovery from the start."

        def handle(self, *args: Any, **options: Any) -> None:
            # With --reload the parent only watches files; the child does the work.
            if not options.get("reload") or os.environ.get(DJANGO_AUTORELOAD_ENV) == "true":
                async_actions.startup()
            super().handle(*args, **options)

else:  # pragma: no cover

    class Command(BaseCommand):  # type: ignore[no-redef]
        help = "Needs django-tasks-db (pip install django-tasks-db)."

        def handle(self, *args: Any, **options: Any) -> None:
            raise CommandError("async_actions_worker needs django-tasks-db installed.")
