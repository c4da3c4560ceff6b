from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AsyncActionsConfig(AppConfig):
    name = "async_actions"
    verbose_name = _("Async actions")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: these modules load models, which need the app
        # registry this method is called from (the app-registry guard Django documents).
        from django.contrib.auth.signals import user_logged_in
        from django.utils.module_loading import autodiscover_modules

        from async_actions import (
            checks,  # noqa: F401  (registers the system checks)
            ownership,
            runners,  # noqa: F401  (installs the dispatcher lower layers use)
            service,  # noqa: F401  (installs the starter handler handles use)
        )

        # Moves the session's anonymous actions to the user (CLAIM_SESSION_ACTIONS_ON_LOGIN).
        user_logged_in.connect(
            ownership.claim_session_actions, dispatch_uid="async_actions.claim_session_actions"
        )

        # Handlers live in each app's ``actions`` module, found like admin.py is.
        # Nothing starts here: servers and workers call ``async_actions.startup()``.
        autodiscover_modules("actions")
