import sys

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AsyncActionsConfig(AppConfig):
    name = "async_actions"
    verbose_name = _("Async actions")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from async_actions import (
            checks,  # noqa: F401  (registers the system checks)
            fairness,
        )
        from async_actions.signals import action_finished

        # Every end of an action frees a place under MAX_RUNNING_PER_OWNER.
        action_finished.connect(
            fairness.on_action_finished, sender=None, dispatch_uid="async_actions.fairness"
        )

        # Handlers live in each app's ``actions`` module, found like admin.py is.
        autodiscover_modules("actions")
        if _is_tasks_worker():
            from async_actions import recovery

            # A worker sweeps from its start, not from its first task: after a crash
            # the survivors may all be idle, fresh processes.
            recovery.start_periodic()


def _is_tasks_worker() -> bool:
    """True in ``manage.py db_worker`` (django-tasks-db), the worker people run."""
    return sys.argv[1:2] == ["db_worker"]
