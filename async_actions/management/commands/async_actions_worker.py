"""``manage.py async_actions_worker``: django-tasks-db's ``db_worker`` that recovers at once
and runs many actions at once.

It takes every option of ``db_worker`` and calls ``async_actions.startup()`` before the
worker loop, so a worker sweeps from its start instead of from its first task: after a
crash the surviving workers may all be fresh and idle. django-tasks-db has no worker-start
hook or signal to attach this to, and guessing the command from ``sys.argv`` would start
threads in processes that only share the name.

``--concurrency`` (default ``ASYNC_ACTIONS['WORKER_CONCURRENCY']``, 1) is how many actions
the process runs at once: 1 is ``db_worker`` itself; more runs that many of its worker
loops on threads (:class:`async_actions.runners.worker_pool.WorkerPool`).
"""

from __future__ import annotations

import os
from argparse import ArgumentParser, ArgumentTypeError
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.utils.autoreload import DJANGO_AUTORELOAD_ENV, run_with_reloader

import async_actions
from async_actions.conf import action_settings
from async_actions.metrics.views import require_prometheus_client

try:
    from prometheus_client import start_http_server

    from async_actions.metrics.collectors import registry as metrics_registry
except ImportError:  # the metrics extra is not installed: --metrics-port says so
    start_http_server = None  # type: ignore[assignment]
    metrics_registry = None  # type: ignore[assignment]

DBWorkerCommand: type[BaseCommand] | None
try:
    from django_tasks_db.management.commands.db_worker import Command as _DBWorker

    from async_actions.runners.worker_pool import WorkerPool

    DBWorkerCommand = _DBWorker
except ImportError:  # pragma: no cover - django-tasks-db is an optional dependency
    DBWorkerCommand = None


def concurrency_value(value: str) -> int:
    """``--concurrency``: a whole number, 1 or more."""
    try:
        number = int(value)
    except ValueError:
        raise ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise ArgumentTypeError("must be 1 or more")
    return number


def serve_metrics(port: int, addr: str) -> None:
    """Serve the Prometheus metrics of this worker process on ``addr:port`` (a thread
    of prometheus_client's own): its counters count the actions this process runs."""
    try:
        require_prometheus_client()
    except ImproperlyConfigured as exc:
        raise CommandError(str(exc)) from None
    start_http_server(port, addr=addr, registry=metrics_registry)


if DBWorkerCommand is not None:

    class Command(DBWorkerCommand):  # type: ignore[misc,valid-type]
        help = (
            "Run django-tasks-db's db_worker with async_actions recovery from the start, "
            "running up to --concurrency actions at once."
        )

        def add_arguments(self, parser: ArgumentParser) -> None:
            super().add_arguments(parser)
            parser.add_argument(
                "--metrics-port",
                type=int,
                default=None,
                help="Serve this process's Prometheus metrics on this port "
                "(needs prometheus_client; see docs/metrics.md).",
            )
            parser.add_argument(
                "--metrics-addr",
                default="127.0.0.1",
                help="Address the metrics port listens on (default: %(default)s).",
            )
            parser.add_argument(
                "--concurrency",
                type=concurrency_value,
                default=None,
                help="Actions this process runs at once, each on a thread of its own "
                "(default: ASYNC_ACTIONS['WORKER_CONCURRENCY'], 1).",
            )

        def handle(self, *args: Any, **options: Any) -> None:
            concurrency = options.pop("concurrency") or action_settings.WORKER_CONCURRENCY
            metrics = (options.pop("metrics_port"), options.pop("metrics_addr"))
            # With --reload the parent only watches files; the child does the work.
            if not options.get("reload") or os.environ.get(DJANGO_AUTORELOAD_ENV) == "true":
                if metrics[0] is not None:
                    serve_metrics(*metrics)
                async_actions.startup()
            if concurrency == 1:
                super().handle(*args, **options)
            else:
                self._run_pool(concurrency, **options)

        def _run_pool(self, concurrency: int, **options: Any) -> None:
            """What ``db_worker``'s ``handle`` does, with a pool of worker loops."""
            self.configure_logging(options["verbosity"])
            reload = options["reload"] and not options["batch"]
            queue_names = options["queue_name"].split(",")
            excluded = options["exclude_queues"].split(",") if options["exclude_queues"] else []
            if excluded and "*" not in queue_names:
                raise CommandError("--exclude-queues can only be used with --queue-name=*")
            pool = WorkerPool(
                concurrency,
                {
                    "queue_names": queue_names,
                    "interval": options["interval"],
                    "batch": options["batch"],
                    "backend_name": options["backend_name"],
                    "startup_delay": options["startup_delay"],
                    "max_tasks": options["max_tasks"],
                    "worker_id": options["worker_id"],
                    "excluded_queue_names": excluded,
                },
            )
            if reload:
                if os.environ.get(DJANGO_AUTORELOAD_ENV) == "true":
                    pool.install_signals()
                run_with_reloader(pool.run)
            else:
                pool.install_signals()
                pool.run()

else:  # pragma: no cover

    class Command(BaseCommand):  # type: ignore[no-redef]
        help = "Needs django-tasks-db (pip install django-tasks-db)."

        def handle(self, *args: Any, **options: Any) -> None:
            raise CommandError("async_actions_worker needs django-tasks-db installed.")
