import contextlib

from django.apps import AppConfig


class BenchConfig(AppConfig):
    name = "bench"
    label = "bench"

    def ready(self) -> None:
        # The peer's Celery app must be the current app in the server process, as a
        # project's __init__ makes it, so celery-progress's view reads its backend.
        # Without the bench extra there is no peer, and nothing to import.
        with contextlib.suppress(ImportError):
            from bench import celery_app  # noqa: F401
