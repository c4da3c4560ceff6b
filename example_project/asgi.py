"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import re_path  # noqa: E402

import async_actions  # noqa: E402
from async_actions.origins import SameOriginValidator  # noqa: E402
from async_actions.routing import (  # noqa: E402
    StatusPollRouter,
    websocket_not_found,
    websocket_urlpatterns,
)

if settings.DEBUG:  # `python -m daphne` serves static files itself only in the demo
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

application = ProtocolTypeRouter(
    {
        # Status polls and the actions API through Django in one thread hop, on 4
        # threads that keep their database connection for 60 s (docs/deploy.md).
        "http": StatusPollRouter(django_asgi_app, conn_max_age=60, api=True),
        "websocket": SameOriginValidator(
            AuthMiddlewareStack(
                URLRouter([*websocket_urlpatterns, re_path(r"", websocket_not_found)])
            )
        ),
    }
)
async_actions.startup()  # recovery and the runner start with the server, not the first POST
