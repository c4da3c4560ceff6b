from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AsyncActionsConfig(AppConfig):
    name = "async_actions"
    verbose_name = _("Async actions")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from async_actions import checks  # noqa: F401  (registers the system checks)

        # Handlers live in each app's ``actions`` module, found like admin.py is.
        # Nothing starts here: servers and workers call ``async_actions.startup()``.
        autodiscover_modules("actions")
