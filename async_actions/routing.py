"""WebSocket routes to include in the project's ASGI ``URLRouter``.

Wrap them in ``AuthMiddlewareStack`` (ownership needs the user and session) and
``async_actions.origins.SameOriginValidator`` (scheme, host and port of the origin)::

    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": SameOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    })
"""

from __future__ import annotations

from django.urls import path

from async_actions.consumers import ActionConsumer
from async_actions.paths import WEBSOCKET_PATH, WEBSOCKET_ROUTE

__all__ = ["WEBSOCKET_PATH", "websocket_urlpatterns"]  # WEBSOCKET_PATH: the old import path

websocket_urlpatterns = [
    path(WEBSOCKET_ROUTE, ActionConsumer.as_asgi(), name="async_actions_ws"),
]
